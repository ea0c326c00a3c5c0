//! Writes the CRD generated from the Rust types to where it is committed (see `CRD_PATH`).

use std::path::Path;

use metrics_pipeline_crds::crd::{CRD_PATH, crd_yaml};

fn main() -> std::io::Result<()> {
    // `cargo run` sets CARGO_MANIFEST_DIR to this checkout; `env!` could name another one that
    // shares the build cache.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = Path::new(&manifest_dir).join("..").join(CRD_PATH);
    std::fs::create_dir_all(path.parent().expect("CRD_PATH has a folder"))?;
    std::fs::write(&path, crd_yaml())?;
    println!("wrote {}", path.display());
    Ok(())
}
