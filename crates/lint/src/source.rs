//! Reading manifests: files and directories of YAML, each document becoming an [`Object`].

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::node::parse_documents;
use crate::object::{Manifests, Object};

/// The text of one manifest file, with the name findings will show for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

/// Why input could not be linted. `stator lint` exits 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no *.yaml or *.yml files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
    #[error("{}:{line}: not valid YAML: {message}", path.display())]
    InvalidYaml {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads every path: a file is read whatever its name; a directory is walked recursively for
/// `*.yaml` and `*.yml` files (hidden entries skipped), in name order so output is stable.
/// Every unreadable path is reported, not just the first.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Source>, Vec<LoadError>> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let before = sources.len();
                let mut seen = HashSet::new();
                walk(path, &mut seen, &mut sources, &mut errors);
                if sources.len() == before && errors.is_empty() {
                    errors.push(LoadError::EmptyDirectory { path: path.clone() });
                }
            }
            Ok(_) => read_file(path, &mut sources, &mut errors),
            Err(source) => errors.push(LoadError::Unreadable {
                path: path.clone(),
                source,
            }),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

fn walk(
    dir: &Path,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<Source>,
    errors: &mut Vec<LoadError>,
) {
    // A symlink loop would otherwise walk forever.
    if let Ok(real) = dir.canonicalize()
        && !seen.insert(real)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(LoadError::Unreadable {
                path: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, seen, out, errors);
        } else if is_yaml(&path) {
            read_file(&path, out, errors);
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn read_file(path: &Path, out: &mut Vec<Source>, errors: &mut Vec<LoadError>) {
    match std::fs::read_to_string(path) {
        Ok(text) => out.push(Source {
            file: path.to_path_buf(),
            text,
        }),
        Err(source) => errors.push(LoadError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses every source into objects. Documents that are not Kubernetes objects (no `kind`)
/// are skipped; `kind: List` is unpacked into its items. Every broken file is reported.
pub fn parse_sources(sources: &[Source]) -> Result<Manifests, Vec<LoadError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for source in sources {
        match parse_documents(&source.text) {
            Ok(docs) => {
                for doc in docs {
                    Object::collect(&source.file, doc, &mut objects);
                }
            }
            Err(e) => errors.push(LoadError::InvalidYaml {
                path: source.file.clone(),
                line: e.line,
                message: e.message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(Manifests { objects })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_walked_for_yaml_files_only_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), "kind: B\n").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: A\n").unwrap();
        std::fs::write(dir.path().join("README.md"), "# not yaml: [").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "kind: H\n").unwrap();
        let sources = read_paths(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = sources
            .iter()
            .map(|s| s.file.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            vec![PathBuf::from("a.yaml"), PathBuf::from("sub/b.yml")]
        );
    }

    #[test]
    fn missing_paths_are_all_reported() {
        let errors = read_paths(&["/nonexistent/a".into(), "/nonexistent/b".into()]).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(
            errors[1]
                .to_string()
                .starts_with("/nonexistent/b: cannot read")
        );
    }

    #[test]
    fn invalid_yaml_names_file_and_line() {
        let sources = vec![Source {
            file: "x.yaml".into(),
            text: "kind: Secret\nmetadata:\n  name: [unclosed\n".into(),
        }];
        let errors = parse_sources(&sources).unwrap_err();
        let message = errors[0].to_string();
        assert!(message.starts_with("x.yaml:"), "{message}");
        assert!(matches!(errors[0], LoadError::InvalidYaml { line, .. } if line >= 3));
    }

    #[test]
    fn lists_are_unpacked_and_non_objects_skipped() {
        let sources = vec![Source {
            file: "x.yaml".into(),
            text: "---\n---\njust: data\n---\nkind: List\nitems:\n- kind: Secret\n  metadata: {name: s}\n".into(),
        }];
        let manifests = parse_sources(&sources).unwrap();
        assert_eq!(manifests.objects.len(), 1);
        assert_eq!(manifests.objects[0].display(), "Secret/s");
        assert_eq!(manifests.objects[0].line, 8);
    }
}
