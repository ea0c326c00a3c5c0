//! Writes the CRD generated from the Rust types to where it is committed (see `CRD_PATH`).

use metrics_pipeline_api::crd::{CRD_PATH, crd_yaml, repository_root};

fn main() -> std::io::Result<()> {
    let path = repository_root().join(CRD_PATH);
    std::fs::create_dir_all(path.parent().expect("CRD_PATH has a folder"))?;
    std::fs::write(&path, crd_yaml())?;
    println!("wrote {}", path.display());
    Ok(())
}
