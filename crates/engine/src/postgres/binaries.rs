//! Finding PostgreSQL's programs: the instance config's `binDir`, else the Debian layout
//! `/usr/lib/postgresql/MAJOR/bin`, else PATH. A missing program names the package to install.

use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// The programs Stator runs.
pub const PROGRAMS: [&str; 4] = ["postgres", "initdb", "pg_basebackup", "pg_rewind"];

/// Where PostgreSQL's programs are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// Finds a directory holding every program of [`PROGRAMS`].
    pub fn find(bin_dir: Option<&Path>, major: &str) -> Result<Binaries, EngineError> {
        let candidates: Vec<PathBuf> = match bin_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => {
                let mut c = vec![PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))];
                if let Some(path) = std::env::var_os("PATH") {
                    c.extend(std::env::split_paths(&path));
                }
                c
            }
        };
        for dir in &candidates {
            if PROGRAMS.iter().all(|p| is_executable(&dir.join(p))) {
                return Ok(Binaries { dir: dir.clone() });
            }
        }
        let missing = candidates
            .first()
            .and_then(|dir| PROGRAMS.iter().find(|p| !is_executable(&dir.join(p))))
            .unwrap_or(&"postgres");
        Err(EngineError::MissingBinary {
            binary: (*missing).to_string(),
            searched: candidates
                .iter()
                .take(3)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
                + if candidates.len() > 3 { ", PATH" } else { "" },
            version: major.to_string(),
        })
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The major version the `postgres` binary reports (`postgres (PostgreSQL) 15.14` → `15`).
    pub fn major_version(&self) -> Result<String, EngineError> {
        let program = self.program("postgres");
        let out = std::process::Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| EngineError::io(&program, "run", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major_version(&text).ok_or_else(|| {
            EngineError::State(format!(
                "{}: unexpected version output {:?}",
                program.display(),
                text.trim()
            ))
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `postgres (PostgreSQL) 15.14 (Debian 15.14-1)` → `15`.
pub fn parse_major_version(text: &str) -> Option<String> {
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let major = version.split('.').next()?;
    major
        .chars()
        .all(|c| c.is_ascii_digit())
        .then(|| major.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_is_read_from_postgres_version_output() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg120+1)\n"),
            Some("15".into())
        );
        assert_eq!(parse_major_version("garbage"), None);
    }

    #[test]
    fn a_missing_bin_dir_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let e = Binaries::find(Some(dir.path()), "15")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install postgresql-15"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }
}
