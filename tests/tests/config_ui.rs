//! `trellis serve --config BAD.toml` prints exactly the expected error: each `tests/ui/config/*.toml`
//! is paired with a `.err` file holding the whole stderr. Run with `TRELLIS_BLESS=1` to rewrite
//! the `.err` files after an intended change, then review the diff.

use std::path::Path;
use std::time::Duration;

use trellis_tests::run_trellis;

#[test]
fn bad_config_files_print_the_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/config");
    let bless = std::env::var_os("TRELLIS_BLESS").is_some();
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
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}");
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!(
                "missing {}: run with TRELLIS_BLESS=1",
                expected_path.display()
            )
        });
        if stderr != expected {
            failures.push(format!(
                "{name}:\n--- expected\n{expected}--- got\n{stderr}"
            ));
        }
        assert!(
            !stderr.contains("secret"),
            "{name} echoes a secret:\n{stderr}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
