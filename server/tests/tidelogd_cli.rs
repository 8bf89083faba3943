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

/// Starts tidelogd with `args` and `envs`, returns its ready line, then kills it.
fn ready_line(args: &[&str], envs: &[(&str, &str)]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidelogd"))
        .args(args)
        .env_remove("TIDELOG_DATA_DIR")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting tidelogd");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the ready line");
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn flags_beat_environment_beat_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidelog.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nretention_interval = \"1s\"\n",
            dir.path().join("from-file").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let from_env = dir.path().join("from-env");
    let from_flag = dir.path().join("from-flag");

    let line = ready_line(&["--config", config], &[]);
    assert!(line.starts_with("tidelogd ready grpc=127.0.0.1:"), "{line}");
    assert!(line.trim_end().ends_with("from-file"), "{line}");

    let env = [("TIDELOG_DATA_DIR", from_env.to_str().unwrap())];
    let line = ready_line(&["--config", config], &env);
    assert!(line.trim_end().ends_with("from-env"), "{line}");

    let line = ready_line(
        &[
            "--config",
            config,
            "--data-dir",
            from_flag.to_str().unwrap(),
        ],
        &env,
    );
    assert!(line.trim_end().ends_with("from-flag"), "{line}");
}
