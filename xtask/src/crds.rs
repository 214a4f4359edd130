//! `cargo xtask crds`: writes the provisioner's CustomResourceDefinitions, generated from the
//! Rust types in `spot-provisioner/src/api`, to `deploy/provisioner/crds/`. A test in
//! spot-provisioner (`tests/crds.rs`) fails when the committed files differ from the types.

use std::path::Path;

use anyhow::{Context, Result};

/// Options of `cargo xtask crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Only check that the committed files are current (exit 1 when they are not).
    #[arg(long)]
    pub check: bool,
}

/// Writes (or checks) every CRD file.
pub fn run(root: &Path, args: &CrdsArgs) -> Result<()> {
    let dir = root.join("deploy/provisioner/crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut stale = Vec::new();
    for (file, text) in spot_provisioner::api::crd_yaml().context("render the CRDs as YAML")? {
        let path = dir.join(file);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            continue;
        }
        if args.check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, &text).with_context(|| format!("write {}", path.display()))?;
            eprintln!("xtask: wrote {}", path.display());
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "out of date (run `cargo xtask crds`): {}",
        stale.join(", ")
    );
    Ok(())
}
