//! Writes the CRD generated from the Rust types to where it is committed (see `CRD_PATH`).

use std::path::Path;

use metrics_pipeline_crds::crd::{CRD_PATH, crd_yaml};

fn main() -> std::io::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CRD_PATH);
    std::fs::create_dir_all(path.parent().expect("CRD_PATH has a folder"))?;
    std::fs::write(&path, crd_yaml())?;
    println!("wrote {}", path.display());
    Ok(())
}
