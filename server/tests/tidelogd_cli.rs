//! The tidelogd binary's command line (this test also makes `cargo test` build the
//! binary the black-box tests in tests/ run).

use std::process::Command;

#[test]
fn help_documents_every_setting() {
    let output = Command::new(env!("CARGO_BIN_EXE_tidelogd"))
        .arg("--help")
        .output()
        .expect("running tidelogd --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--config",
        "--data-dir",
        "TIDELOG_DATA_DIR",
        "--listen",
        "TIDELOG_LISTEN",
        "127.0.0.1:7420",
        "--metrics-listen",
        "127.0.0.1:7421",
        "--log-level",
        "RUST_LOG",
        "--retention-interval",
        "--flush-threads",
        "--max-request-bytes",
        "--shutdown-timeout",
        "tidelogd ready",
    ] {
        assert!(
            help.contains(expected),
            "{expected} missing from --help:\n{help}"
        );
    }
}

#[test]
fn bad_settings_fail_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_tidelogd"))
        .args(["--retention-interval", "soon"])
        .output()
        .expect("running tidelogd");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("retention_interval"), "{stderr}");
}
