//! `tapnet man DIR`: man pages generated from the clap definition (clap_mangen):
//! `tapnet.1`, and one page per command, named by its path (`tapnet-network.1`,
//! `tapnet-network-create.1`, ...), each with its synopsis, options and commands.
//! Prints the path of each page written.

use super::Out;
use crate::args::Cli;
use clap::CommandFactory;
use std::path::{Path, PathBuf};

/// Write every page into `dir` (made if missing); returns the files, sorted.
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = page_names()
        .into_iter()
        .map(|n| dir.join(format!("{n}.1")))
        .collect();
    files.sort();
    Ok(files)
}

/// The page name of every visible command: `tapnet`, `tapnet-network`, ...
pub fn page_names() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        out.push(prefix.to_string());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "tapnet", &mut out);
    out
}

/// `tapnet man DIR`.
pub fn run(dir: &Path, o: &mut Out<'_>) -> anyhow::Result<()> {
    for f in write_pages(dir)? {
        writeln!(o.out, "{}", f.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::client::tests::temp_dir;

    #[test]
    fn a_page_for_every_command() {
        let dir = temp_dir().join("man");
        let files = write_pages(&dir).unwrap();
        let names = page_names();
        assert!(names.len() > 20, "{names:?}");
        for n in [
            "tapnet",
            "tapnet-network-create",
            "tapnet-network-ls",
            "tapnet-sandbox-rm",
            "tapnet-run",
            "tapnet-completion",
            "tapnet-man",
        ] {
            assert!(names.iter().any(|x| x == n), "no page {n} in {names:?}");
        }
        assert_eq!(files.len(), names.len());
        let on_disk = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            on_disk,
            names.len(),
            "pages written that page_names does not list"
        );
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let stem = f.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                text.starts_with(".ie"),
                "{stem}: not roff: {}",
                &text[..40.min(text.len())]
            );
            assert!(
                text.contains(&format!(".TH {stem} 1")),
                "{stem}: no .TH title"
            );
            assert!(text.contains(".SH SYNOPSIS"), "{stem}: no synopsis");
        }
        let rm = std::fs::read_to_string(dir.join("tapnet-sandbox-rm.1")).unwrap();
        assert!(rm.contains("SIGKILL"), "{rm}");
        let ls = std::fs::read_to_string(dir.join("tapnet-network-ls.1")).unwrap();
        assert!(
            ls.contains("\\-\\-format") && ls.contains("\\-\\-no\\-trunc"),
            "{ls}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
