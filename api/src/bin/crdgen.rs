//! Writes what is generated from the Rust types to where it is committed: the CRD (see
//! `CRD_PATH`) and its field reference (see `FIELDS_PATH`).

use metrics_pipeline_api::crd::{CRD_PATH, crd_yaml, repository_root};
use metrics_pipeline_api::reference::{FIELDS_PATH, field_reference};

fn main() -> std::io::Result<()> {
    for (relative, content) in [(CRD_PATH, crd_yaml()), (FIELDS_PATH, field_reference())] {
        let path = repository_root().join(relative);
        std::fs::create_dir_all(path.parent().expect("a generated file has a folder"))?;
        std::fs::write(&path, content)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
