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
        .env_remove("TIDELOG_RETENTION_INTERVAL")
        .output()
        .expect("running tidelogd");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--retention-interval"), "{stderr}");
}

/// Issue 12 bug 7: a duration without a unit is refused in every place tidelogd reads
/// one (flag, environment, TOML), naming where it came from; `0` and every form of
/// the one grammar (`1h30m`, ISO-8601 `PT1S`) are accepted.
#[test]
fn durations_without_a_unit_are_refused_wherever_they_come_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // A setting that is accepted starts the broker: give it a few seconds, then stop it.
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidelogd"))
            .args(["--data-dir", data, "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TIDELOG_RETENTION_INTERVAL")
            .env_remove("TIDELOG_SHUTDOWN_TIMEOUT")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting tidelogd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while child.try_wait().expect("waiting for tidelogd").is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child
            .wait_with_output()
            .expect("collecting tidelogd's output")
    };
    let refused = |output: std::process::Output, needles: &[&str]| {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
        }
    };
    refused(
        run(&["--retention-interval", "5"], &[]),
        &["--retention-interval", "5 has no unit", "5s"],
    );
    refused(
        run(&["--shutdown-timeout", "10"], &[]),
        &["--shutdown-timeout", "10 has no unit"],
    );
    refused(
        run(&[], &[("TIDELOG_RETENTION_INTERVAL", "5")]),
        &["TIDELOG_RETENTION_INTERVAL", "5 has no unit"],
    );
    let config = dir.path().join("tidelog.toml");
    std::fs::write(&config, "retention_interval = \"5\"\n").unwrap();
    let config = config.to_str().unwrap();
    refused(
        run(&["--config", config], &[]),
        &[
            "tidelog.toml",
            "retention_interval = \"5\"",
            "5 has no unit",
        ],
    );
    // A retention pass needs a period: 0 is refused with the setting named.
    refused(
        run(&["--retention-interval", "0"], &[]),
        &["retention_interval", "at least 1ms"],
    );

    let line = ready_line(
        &[
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--retention-interval",
            "1h30m",
            "--shutdown-timeout",
            "0",
        ],
        &[],
    );
    assert!(line.starts_with("tidelogd ready "), "{line}");
    let line = ready_line(
        &[
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[("TIDELOG_RETENTION_INTERVAL", "PT1S")],
    );
    assert!(line.starts_with("tidelogd ready "), "{line}");
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
