//! `worldcompass schemas`: see [`crate::Command::Schemas`].

use clap::Args;
use anyhow::Context;

/// The arguments of `worldcompass schemas`.
#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// Directory to write into (or check, with --check).
    #[arg(long, default_value = "schemas")]
    pub write: String,
    /// Only check that the directory matches the code.
    #[arg(long)]
    pub check: bool,
}

pub fn run(a: SchemasArgs) -> anyhow::Result<()> {
    let dir = std::path::Path::new(&a.write);
    let mut drift = Vec::new();
    let mut files = wc_schemas::all_schema_files();
    files.push(("tensors/world_model.json".into(), wc_model::checkpoint_layout_json(&wc_model::ModelConfig::default())?));
    for (rel, json) in files {
        let path = dir.join(&rel);
        if a.check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(json.as_str()) {
                drift.push(rel);
            }
        } else {
            std::fs::create_dir_all(path.parent().expect("has parent"))?;
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !drift.is_empty() {
        anyhow::bail!("schema files differ from the code: {}; run `worldcompass schemas --write {}`", drift.join(", "), a.write);
    }
    Ok(())
}
