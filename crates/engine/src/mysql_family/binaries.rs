//! Finding the family's programs: the server (`mariadbd`, `mysqld`) in the instance config's
//! `binDir` (Debian: `/usr/sbin`), else PATH; the tools (`mariadb-install-db`,
//! `mariadb-backup`, `mbstream`) in binDir, binDir/../bin, then PATH.

use std::path::{Path, PathBuf};

use crate::error::EngineError;
use crate::mysql_family::dialect::Dialect;

/// Where the family's programs are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// The server program.
    pub server: PathBuf,
    /// Directories searched for the tools, in order.
    tool_dirs: Vec<PathBuf>,
    package: &'static str,
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn searched(dirs: &[PathBuf]) -> String {
    let mut shown: Vec<String> = dirs
        .iter()
        .take(3)
        .map(|d| d.display().to_string())
        .collect();
    if dirs.len() > 3 {
        shown.push("PATH".into());
    }
    shown.join(", ")
}

impl Binaries {
    /// Finds the server program of `dialect`.
    pub fn find(bin_dir: Option<&Path>, dialect: &Dialect) -> Result<Binaries, EngineError> {
        let server_dirs: Vec<PathBuf> = match bin_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => {
                let mut d = vec![PathBuf::from("/usr/sbin")];
                d.extend(path_dirs());
                d
            }
        };
        let server = server_dirs
            .iter()
            .map(|d| d.join(dialect.server_program))
            .find(|p| is_executable(p))
            .ok_or_else(|| EngineError::MissingProgram {
                program: dialect.server_program.into(),
                searched: searched(&server_dirs),
                package: dialect.package.into(),
            })?;
        let mut tool_dirs = Vec::new();
        if let Some(dir) = server.parent() {
            tool_dirs.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                tool_dirs.push(up.join("bin"));
            }
        }
        tool_dirs.extend(path_dirs());
        Ok(Binaries {
            server,
            tool_dirs,
            package: dialect.package,
        })
    }

    /// A tool, or an error naming where it was looked for.
    pub fn tool(&self, name: &str) -> Result<PathBuf, EngineError> {
        self.tool_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
            .ok_or_else(|| EngineError::MissingProgram {
                program: name.into(),
                searched: searched(&self.tool_dirs),
                package: if name.contains("backup") || name == "mbstream" {
                    "mariadb-backup".into()
                } else {
                    self.package.into()
                },
            })
    }

    /// The version the server program reports (`10.11.19`, `8.0.36`).
    pub fn server_version(&self) -> Result<String, EngineError> {
        let out = std::process::Command::new(&self.server)
            .arg("--version")
            .output()
            .map_err(|e| EngineError::io(&self.server, "run", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_server_version(&text).ok_or_else(|| {
            EngineError::State(format!(
                "{}: unexpected version output {:?}",
                self.server.display(),
                text.trim()
            ))
        })
    }
}

/// `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu` → `10.11.19`.
pub fn parse_server_version(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "Ver")?;
    let version = words.next()?;
    let numeric: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (numeric.split('.').count() >= 2).then_some(numeric)
}

/// `10.11.19` → `10.11`.
pub fn major_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_mariadbd_and_mysqld_output() {
        let v = parse_server_version(
            "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n",
        );
        assert_eq!(v.as_deref(), Some("10.11.19"));
        assert_eq!(major_of("10.11.19"), "10.11");
        let v = parse_server_version(
            "/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)",
        );
        assert_eq!(v.as_deref(), Some("8.0.36"));
        assert_eq!(parse_server_version("garbage"), None);
    }

    #[test]
    fn a_missing_server_names_the_package_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = Binaries::find(Some(dir.path()), &crate::mariadb::DIALECT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mariadbd") && e.contains("mariadb-server"),
            "{e}"
        );
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }
}
