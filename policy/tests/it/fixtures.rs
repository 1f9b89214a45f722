//! Every file in `tests/fixtures/broken/` is a policy with mistakes; the
//! `.expected` file beside it holds exactly what `egressd check` prints for
//! it (the `Display` of the diagnostics, one per line). Set
//! `EGRESSD_BLESS=1` to rewrite the `.expected` files after a deliberate
//! wording change, then review the diff.

use std::path::{Path, PathBuf};

use egressd_policy::Policy;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken")
}

#[test]
fn every_broken_fixture_prints_its_expected_diagnostics() {
    let mut yamls: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    yamls.sort();
    assert!(yamls.len() >= 20, "fixtures missing: {yamls:?}");
    let bless = std::env::var_os("EGRESSD_BLESS").is_some();
    let mut failures = Vec::new();
    for yaml in &yamls {
        let name = yaml.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(yaml).unwrap();
        let got = match Policy::parse(name, &text) {
            Ok(_) => "(loaded without errors)\n".to_owned(),
            Err(d) => format!("{d}\n"),
        };
        let expected_path = yaml.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file", yaml.display()));
        if got != expected {
            failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_is_rejected_and_every_line_has_a_position() {
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let err = Policy::parse("p.yaml", &text).expect_err(&path.display().to_string());
        assert!(!err.0.is_empty());
        for d in &err.0 {
            assert!(d.line >= 1 && d.col >= 1, "{d}");
            assert!(
                d.to_string()
                    .starts_with(&format!("p.yaml:{}:{}: ", d.line, d.col))
            );
        }
    }
}
