//! The linter never panics, whatever it is given: arbitrary text, and real manifests with
//! pieces replaced by arbitrary values (so every rule sees odd types in the fields it reads).

use proptest::prelude::*;
use stator_lint::{Source, lint_sources};

const GUIDE_STATEFULSET: &str =
    include_str!("../../../tests/fixtures/guide/db/mysql/mysql-statefulset.yaml");
const GUIDE_CONFIG: &str = include_str!("../../../tests/fixtures/guide/db/mysql/mysql-config.yaml");
const GUIDE_PDB: &str = include_str!("../../../tests/fixtures/guide/db/mysql/mysql-pdb.yaml");

fn lint(text: &str) {
    let _ = lint_sources(&[Source {
        file: "p.yaml".into(),
        text: text.to_string(),
    }]);
}

/// Values that are valid YAML but the wrong shape or type for most Kubernetes fields.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, {a: b}]".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("\"100%\"".to_string()),
        Just("true".to_string()),
        Just("\"-p$(MYSQL_PWD) ://u:p@h ?password=x é\"".to_string()),
        "[a-zA-Z0-9:/@%$ -]{0,12}".prop_map(|s| format!("{s:?}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        lint(&text);
    }

    #[test]
    fn manifests_with_values_replaced_never_panic(
        line in 0usize..80,
        value in odd_value(),
        which in 0usize..3,
    ) {
        let base = [GUIDE_STATEFULSET, GUIDE_CONFIG, GUIDE_PDB][which];
        let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
        let index = line % lines.len();
        if let Some((key, _)) = lines[index].split_once(": ") {
            lines[index] = format!("{key}: {value}");
        } else if let Some(key) = lines[index].strip_suffix(':') {
            lines[index] = format!("{key}: {value}");
        }
        let text = format!("{}\n---\n{GUIDE_PDB}\n---\n{GUIDE_CONFIG}", lines.join("\n"));
        lint(&text);
    }
}
