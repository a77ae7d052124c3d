//! `trellis serve --config BAD.toml` prints exactly the expected error: each `tests/ui/config/*.toml`
//! is paired with a `.err` file holding the whole stderr. Run with `TRELLIS_BLESS=1` to rewrite
//! the `.err` files after an intended change, then review the diff.

use std::path::Path;
use std::time::Duration;

use trellis_tests::{expect_output, run_trellis};

#[test]
fn bad_config_files_print_the_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/config");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "expected the config UI cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let (status, stdout, stderr) =
            run_trellis(&dir, &["serve", "--config", name], Duration::from_secs(30));
        // 78: a configuration error (see `trellis --help`).
        assert_eq!(status.code(), Some(78), "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}");
        failures.extend(expect_output(name, &case.with_extension("err"), &stderr));
        assert!(
            !stderr.contains("secret"),
            "{name} echoes a secret:\n{stderr}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
