//! The end-to-end scenario suite (issue 5): one command that builds the release
//! binaries, starts tidelogd on a fresh data directory, measures the disk's own
//! ceiling in the same sitting, runs the scenarios with `tidelog bench`, stops the
//! broker and writes a markdown table and a JSON document.
//!
//! ```text
//! cargo run --release -p tidelog-benches --bin scenarios -- [--quick] [--out DIR]
//!     [--messages N] [--recovery-gib G] [--only 1,4,7] [--dir TMPDIR] [--no-build]
//! ```
//!
//! 1. 100 B, 1000 per publish, ack durable, fsync always: 1, 2, 8 producers (stream
//!    and unary).
//! 2. The same with fsync never and ack written.
//! 3. 1 KiB messages, durable, 2 producers: MB/s as a share of the disk ceiling.
//! 4. Replay of what scenario 2 (8 producers) wrote: 1, 2, 8 consumers each reading
//!    it all; and 8 consumers dividing an 8-partition topic.
//! 5. Latency: durable publish at 50% of the rate scenario 1 found for 1 producer
//!    (publish -> ack), and e2e at that rate (publish -> receive).
//! 6. 1000 partitions, 8 producers, durable: throughput relative to 1 partition.
//! 7. Recovery: kill -9 after writing N GiB (fsync never), time from start to the
//!    ready line and to the first served request.
//! 8. zstd vs none on JSON-like 1 KiB payloads: messages/s and disk bytes per
//!    message.
//!
//! Each run's broker CPU (from /proc/<pid>/stat) and the bench client's CPU are
//! recorded beside its figures, so a result can be called CPU- or disk-bound with
//! evidence. Default sizes take about 5-10 minutes; `--quick` about 1-2.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tidelog_benches::{
    dir_bytes, disk_fdatasync_latencies_ms, disk_fdatasync_mib_per_s, process_cpu_seconds, quantile,
};

const USAGE: &str = "usage: scenarios [--quick] [--out DIR] [--messages N] [--recovery-gib G] [--only 1,2,..] [--dir TMPDIR] [--no-build]";

/// What `--help` prints: every option, so `--quick` is found where users look.
const HELP: &str = "\
The end-to-end benchmark suite: builds the release binaries, starts tidelogd on a fresh
data directory, measures the disk's ceiling, runs scenarios 1-8 with `tidelog bench`,
and writes a markdown table and a JSON document (see BENCHMARKS.md).

Options:
  --quick             smaller runs: about 1-2 minutes instead of 5-10
  --out DIR           results directory (default target/bench-results/)
  --messages N        messages per 100 B throughput run (default 5,000,000; --quick 1,000,000)
  --recovery-gib G    log size written before the kill -9 of scenario 7 (default 1; --quick 0.25)
  --only 1,4,7        run some scenarios only
  --dir TMPDIR        where the data directory goes (default $TMPDIR; keep it on the disk you measure)
  --no-build          use the binaries already in target/release/
  -h, --help          this text

Example:
  cargo run --release -p tidelog-benches --bin scenarios -- --quick --only 1,5";

#[derive(Debug)]
struct Options {
    quick: bool,
    out: PathBuf,
    /// Messages per 100 B throughput run.
    messages: u64,
    recovery_gib: f64,
    only: Option<Vec<u32>>,
    dir: Option<PathBuf>,
    build: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ lives in the workspace")
        .to_path_buf()
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        out: workspace_root().join("target/bench-results"),
        messages: 0,
        recovery_gib: 0.0,
        only: None,
        dir: None,
        build: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-build" => options.build = false,
            "--out" => options.out = PathBuf::from(value("--out")?),
            "--dir" => options.dir = Some(PathBuf::from(value("--dir")?)),
            "--messages" => {
                options.messages = value("--messages")?
                    .parse()
                    .map_err(|_| "--messages takes a count")?;
            }
            "--recovery-gib" => {
                options.recovery_gib = value("--recovery-gib")?
                    .parse()
                    .map_err(|_| "--recovery-gib takes a number")?;
            }
            "--only" => {
                let list = value("--only")?
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "--only takes scenario numbers, e.g. 1,4,7")?;
                options.only = Some(list);
            }
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.messages == 0 {
        options.messages = if options.quick { 1_000_000 } else { 5_000_000 };
    }
    if options.recovery_gib <= 0.0 {
        options.recovery_gib = if options.quick { 0.25 } else { 1.0 };
    }
    Ok(options)
}

/// The release binaries, built first unless `--no-build`.
fn binaries(build: bool) -> Result<(PathBuf, PathBuf), String> {
    if build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building release tidelogd and tidelog ...");
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "tidelog-server",
                "--bin",
                "tidelogd",
                "-p",
                "tidelog-tools",
                "--bin",
                "tidelog",
            ])
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build --release failed".into());
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory for this executable")?;
    let (tidelogd, tidelog) = (dir.join("tidelogd"), dir.join("tidelog"));
    for bin in [&tidelogd, &tidelog] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing; run `cargo build --release -p tidelog-server -p tidelog-tools` (or drop --no-build)",
                bin.display()
            ));
        }
    }
    Ok((tidelogd, tidelog))
}

/// A tidelogd this suite started.
struct Broker {
    child: Option<Child>,
    pid: u32,
    addr: String,
    /// Spawn to ready line.
    ready_after: Duration,
}

impl Broker {
    fn start(bin: &Path, data: &Path, log: &Path) -> Result<Broker, String> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting tidelogd: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("tidelogd ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(600)).map_err(|_| {
            let _ = child.kill();
            "tidelogd printed no ready line within 10 minutes".to_string()
        })?;
        let ready_after = started.elapsed();
        let addr = line
            .split_whitespace()
            .find_map(|part| part.strip_prefix("grpc="))
            .ok_or(format!("no grpc= in {line:?}"))?
            .to_string();
        Ok(Broker {
            pid: child.id(),
            child: Some(child),
            addr,
            ready_after,
        })
    }

    fn cpu(&self) -> f64 {
        process_cpu_seconds(self.pid).unwrap_or(0.0)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One `tidelog bench` run and what it cost.
struct Run {
    json: Value,
    server_cpu: f64,
    client_cpu: f64,
    wall: f64,
    /// Share of the run's wall time in which some runnable task waited for a CPU
    /// (Linux PSI, /proc/pressure/cpu "some"): contention from other processes.
    cpu_pressure: Option<f64>,
    ok: bool,
}

/// Total microseconds of CPU pressure ("some") so far, from Linux PSI.
fn cpu_pressure_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

fn tidelog(bin: &Path, broker: &Broker, args: &[&str]) -> Result<String, String> {
    let output = Command::new(bin)
        .arg("--server")
        .arg(&broker.addr)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running tidelog: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "tidelog {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn bench(bin: &Path, broker: &Broker, args: &[String]) -> Result<Run, String> {
    eprintln!("  tidelog bench {}", args.join(" "));
    let cpu_before = broker.cpu();
    let pressure_before = cpu_pressure_us();
    let started = Instant::now();
    let output = Command::new(bin)
        .arg("--server")
        .arg(&broker.addr)
        .arg("--json")
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running tidelog bench: {e}"))?;
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = broker.cpu() - cpu_before;
    let cpu_pressure = match (pressure_before, cpu_pressure_us()) {
        (Some(before), Some(after)) => Some((after - before) as f64 / 1e6 / wall),
        _ => None,
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).map_err(|_| {
        format!(
            "tidelog bench {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    let ok = output.status.success() && json["validation"]["ok"] == true;
    if !ok {
        eprintln!(
            "  VALIDATION FAILED: {}",
            json["validation"]["first_errors"]
        );
    }
    Ok(Run {
        client_cpu: json["client_cpu_seconds"].as_f64().unwrap_or(0.0),
        json,
        server_cpu,
        wall,
        cpu_pressure,
        ok,
    })
}

/// A line of the result table.
#[derive(Debug, Default, Clone)]
struct Row {
    id: String,
    scenario: String,
    setup: String,
    messages_per_s: Option<f64>,
    mb_per_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    target: String,
    verdict: String,
    note: String,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    wall: Option<f64>,
    cpu_pressure: Option<f64>,
    /// Messages the CPU figures are for.
    messages: Option<u64>,
    valid: Option<bool>,
}

impl Row {
    fn from_run(id: &str, scenario: &str, setup: &str, run: &Run, side: &str) -> Row {
        let total = &run.json[side]["total"];
        let latency = &total["latency"];
        Row {
            id: id.into(),
            scenario: scenario.into(),
            setup: setup.into(),
            messages_per_s: total["messages_per_s"].as_f64(),
            mb_per_s: total["mb_per_s"].as_f64(),
            p50_us: latency["p50_us"].as_f64(),
            p99_us: latency["p99_us"].as_f64(),
            p999_us: latency["p99_9_us"].as_f64(),
            server_cpu: Some(run.server_cpu),
            client_cpu: Some(run.client_cpu),
            wall: Some(run.wall),
            cpu_pressure: run.cpu_pressure,
            messages: total["messages"].as_u64(),
            valid: Some(run.ok),
            ..Row::default()
        }
    }

    /// Compares the rate with Iggy's range (low, high): met at or above the high end.
    fn against(mut self, what: &str, low: f64, high: f64) -> Row {
        self.target = if (low - high).abs() < 1.0 {
            format!("{what} {}", rate(high))
        } else {
            format!("{what} {}-{}", rate(low), rate(high))
        };
        self.verdict = match self.messages_per_s {
            Some(r) if r >= high => format!("yes ({:.0}% of {})", 100.0 * r / high, rate(high)),
            Some(r) if r >= low => format!("partly ({:.0}% of {})", 100.0 * r / high, rate(high)),
            Some(r) => format!("no ({:.0}% of {})", 100.0 * r / high, rate(high)),
            None => "-".into(),
        };
        self
    }

    fn noted(mut self, note: &str) -> Row {
        self.note = note.to_string();
        self
    }

    /// Broker + client CPU per message: what the two cores pay for each one.
    fn cpu_ns_per_message(&self) -> Option<f64> {
        match (self.server_cpu, self.client_cpu, self.messages) {
            (Some(s), Some(c), Some(n)) if n > 0 => Some((s + c) * 1e9 / n as f64),
            _ => None,
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "scenario": self.scenario,
            "setup": self.setup,
            "messages_per_s": self.messages_per_s,
            "mb_per_s": self.mb_per_s,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p99_9_us": self.p999_us,
            "target": self.target,
            "verdict": self.verdict,
            "note": self.note,
            "server_cpu_seconds": self.server_cpu,
            "client_cpu_seconds": self.client_cpu,
            "wall_seconds": self.wall,
            "cpu_ns_per_message": self.cpu_ns_per_message(),
            "cpu_pressure_share": self.cpu_pressure,
            "validation_ok": self.valid,
        })
    }
}

fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.0}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

fn ms(us: Option<f64>) -> String {
    match us {
        Some(us) if us < 1000.0 => format!("{:.2}", us / 1000.0),
        Some(us) => format!("{:.1}", us / 1000.0),
        None => "-".into(),
    }
}

fn cpu_cell(row: &Row, cores: f64) -> String {
    match (row.server_cpu, row.client_cpu, row.wall) {
        (Some(s), Some(c), Some(w)) if w > 0.0 => {
            format!("{s:.1}+{c:.1}s ({:.0}%)", 100.0 * (s + c) / (w * cores))
        }
        _ => "-".into(),
    }
}

/// CPU per message and the rate the cores could carry at that cost.
fn cost_cell(row: &Row, cores: f64) -> String {
    match row.cpu_ns_per_message() {
        Some(ns) => format!("{ns:.0} ns ({})", rate(cores * 1e9 / ns)),
        None => "-".into(),
    }
}

fn markdown(rows: &[Row], cores: f64) -> String {
    let mut text = String::from(
        "| # | scenario | setup | msg/s | MB/s | p50 ms | p99 ms | p99.9 ms | Iggy 0.8.0 / goal | met | CPU server+client (share of all cores) | CPU per msg (cores' ceiling) | CPU wait | valid | note |\n\
         |---|---|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.id,
            row.scenario,
            row.setup,
            row.messages_per_s.map_or("-".into(), rate),
            row.mb_per_s.map_or("-".into(), |m| format!("{m:.1}")),
            ms(row.p50_us),
            ms(row.p99_us),
            ms(row.p999_us),
            if row.target.is_empty() {
                "-"
            } else {
                &row.target
            },
            if row.verdict.is_empty() {
                "-"
            } else {
                &row.verdict
            },
            cpu_cell(row, cores),
            cost_cell(row, cores),
            row.cpu_pressure
                .map_or("-".into(), |p| format!("{:.0}%", 100.0 * p)),
            match row.valid {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "-",
            },
            row.note,
        );
    }
    text
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// Iggy's ack-after-fsync (`fsync`) and ack-before-fsync (`enforce`) figures by
/// producer count, and tidelog's durable goal: at least 3x the first and at least
/// the second.
fn durable_goal(producers: u32) -> Option<(f64, f64)> {
    let fsync = match producers {
        1 => Some((94e3_f64, 174e3_f64)),
        2 => Some((281e3, 485e3)),
        _ => None,
    };
    let enforce = match producers {
        1 => (219e3, 305e3),
        2 => (623e3, 714e3),
        8 => (757e3, 757e3),
        _ => return None,
    };
    Some(match fsync {
        Some((low, high)) => (
            f64::max(3.0 * low, enforce.0),
            f64::max(3.0 * high, enforce.1),
        ),
        None => enforce,
    })
}

/// /proc/loadavg (1, 5, 15 minutes, runnable/total, last pid): how busy the shared
/// machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": kernel,
        "loadavg_at_end": load_average(),
    })
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("scenarios: {error}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(&options) {
        eprintln!("scenarios: {error}");
        std::process::exit(1);
    }
}

#[allow(clippy::too_many_lines)]
fn run(options: &Options) -> Result<(), String> {
    let suite_started = Instant::now();
    let load_at_start = load_average();
    let wanted = |n: u32| options.only.as_ref().is_none_or(|only| only.contains(&n));
    let (tidelogd, tidelog_bin) = binaries(options.build)?;
    let parent = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix("tidelog-scenarios-")
        .tempdir_in(&parent)
        .map_err(|e| format!("creating a temp dir in {}: {e}", parent.display()))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let messages = options.messages.to_string();
    let kib_messages = (options.messages / 5).max(10_000).to_string();

    // The disk's own ceiling, in this sitting, on the filesystem the broker uses.
    let probe_mib = if options.quick { 64 } else { 256 };
    eprintln!(
        "disk ceiling: {probe_mib} MiB of 1 MiB write + fdatasync, then 4 KiB fdatasync latency ..."
    );
    let disk_mib_s = disk_fdatasync_mib_per_s(temp.path(), probe_mib);
    let latencies = disk_fdatasync_latencies_ms(temp.path(), if options.quick { 100 } else { 300 });
    let disk = json!({
        "sequential_1mib_fdatasync_mib_per_s": (disk_mib_s * 10.0).round() / 10.0,
        "sequential_1mib_fdatasync_mb_per_s": (disk_mib_s * 1.048_576 * 10.0).round() / 10.0,
        "probe_mib": probe_mib,
        "fdatasync_4kib_ms": {
            "p50": quantile(&latencies, 0.5),
            "p99": quantile(&latencies, 0.99),
            "max": quantile(&latencies, 1.0),
            "samples": latencies.len(),
        },
    });
    eprintln!("  {disk}");
    let disk_mb_s = disk_mib_s * 1.048_576;

    let data = temp.path().join("data");
    let log = temp.path().join("tidelogd.log");
    let mut broker = Broker::start(&tidelogd, &data, &log)?;
    eprintln!("tidelogd pid {} at {}", broker.pid, broker.addr);
    let mut rows: Vec<Row> = Vec::new();
    let mut extra = serde_json::Map::new();
    let base = |producers: u32| -> Vec<String> {
        strings(&[
            "produce",
            "--producers",
            &producers.to_string(),
            "--message-size",
            "100",
            "--batch",
            "1000",
            "--messages",
            &messages,
        ])
    };

    // 1. Durable publish.
    let mut one_producer_rate = None;
    let mut eight_producer_rate = None;
    if wanted(1) || wanted(5) || wanted(6) {
        eprintln!("scenario 1: 100 B, 1000 per publish, ack durable, fsync always");
        for stream in [true, false] {
            for producers in [1u32, 2, 8] {
                if !wanted(1) && !(stream && (producers == 1 || producers == 8)) {
                    continue;
                }
                let mut args = base(producers);
                args.extend(strings(&["--ack", "durable", "--fsync", "always"]));
                if stream {
                    args.push("--stream".into());
                }
                let run = bench(&tidelog_bin, &broker, &args)?;
                let setup = format!(
                    "{producers} producer{}, {}",
                    if producers == 1 { "" } else { "s" },
                    if stream {
                        "stream (8 in flight)"
                    } else {
                        "unary"
                    }
                );
                let mut row = Row::from_run("1", "durable publish", &setup, &run, "producers");
                if stream && producers == 1 {
                    one_producer_rate = row.messages_per_s;
                }
                if stream && producers == 8 {
                    eight_producer_rate = row.messages_per_s;
                }
                if let Some((low, high)) = durable_goal(producers) {
                    row = row.against("goal", low, high);
                }
                if wanted(1) {
                    rows.push(row);
                }
            }
        }
    }

    // 2. Non-durable publish; the 8-producer stream run's topic is kept for 4.
    let replay_topic = "scenario-2-replay";
    let mut replay_messages = None;
    if wanted(2) || wanted(4) {
        eprintln!("scenario 2: 100 B, 1000 per publish, ack written, fsync never");
        for stream in [true, false] {
            for producers in [1u32, 2, 8] {
                let keep = stream && producers == 8 && wanted(4);
                if !wanted(2) && !keep {
                    continue;
                }
                let mut args = base(producers);
                args.extend(strings(&["--ack", "written", "--fsync", "never"]));
                if stream {
                    args.push("--stream".into());
                }
                if keep {
                    args.extend(strings(&["--topic", replay_topic, "--keep"]));
                }
                let run = bench(&tidelog_bin, &broker, &args)?;
                let setup = format!(
                    "{producers} producer{}, {}",
                    if producers == 1 { "" } else { "s" },
                    if stream {
                        "stream (8 in flight)"
                    } else {
                        "unary"
                    }
                );
                let mut row = Row::from_run("2", "non-durable publish", &setup, &run, "producers");
                let (low, high) = match producers {
                    1 => (2.44e6, 2.58e6),
                    2 => (2.69e6, 3.37e6),
                    _ => (3.94e6, 3.94e6),
                };
                row = row.against("Iggy no fsync", low, high);
                if keep {
                    let count = run.json["producers"]["total"]["messages"]
                        .as_u64()
                        .unwrap_or(0);
                    replay_messages = Some(count);
                    let bytes = dir_bytes(&data.join("topics").join(replay_topic));
                    if count > 0 {
                        let per = bytes as f64 / count as f64;
                        row.note = format!("{per:.1} disk bytes per 100 B message (Iggy: 180)");
                        extra.insert(
                            "disk_bytes_per_100b_message".into(),
                            json!((per * 10.0).round() / 10.0),
                        );
                    }
                }
                if wanted(2) {
                    rows.push(row);
                }
            }
        }
    }

    // 3. 1 KiB durable: MB/s against the disk.
    if wanted(3) {
        eprintln!("scenario 3: 1 KiB, durable, 2 producers");
        for stream in [true, false] {
            let mut args = strings(&[
                "produce",
                "--producers",
                "2",
                "--message-size",
                "1KiB",
                "--batch",
                "1000",
                "--messages",
                &kib_messages,
                "--ack",
                "durable",
                "--fsync",
                "always",
            ]);
            if stream {
                args.push("--stream".into());
            }
            let run = bench(&tidelog_bin, &broker, &args)?;
            let setup = format!(
                "2 producers, {}",
                if stream {
                    "stream (8 in flight)"
                } else {
                    "unary"
                }
            );
            let mut row = Row::from_run("3", "1 KiB durable publish", &setup, &run, "producers");
            let mb = row.mb_per_s.unwrap_or(0.0);
            row.target = "Iggy 137-189 MB/s".into();
            row.verdict = format!("{:.0}% of the disk ceiling", 100.0 * mb / disk_mb_s);
            rows.push(row);
        }
    }

    // 4. Replay.
    if wanted(4) {
        eprintln!("scenario 4: consume what scenario 2 wrote");
        if let Some(count) = replay_messages {
            for consumers in [1u32, 2, 8] {
                let mut args = strings(&[
                    "consume",
                    "--topic",
                    replay_topic,
                    "--consumers",
                    &consumers.to_string(),
                ]);
                if consumers > 1 {
                    args.push("--fanout".into());
                }
                let run = bench(&tidelog_bin, &broker, &args)?;
                let setup = format!(
                    "{consumers} consumer{} of 1 partition ({count} messages{})",
                    if consumers == 1 { "" } else { "s" },
                    if consumers == 1 {
                        ""
                    } else {
                        ", each reads all"
                    }
                );
                let (low, high) = match consumers {
                    1 => (2.6e6, 3.1e6),
                    2 => (1.9e6, 3.8e6),
                    _ => (4.9e6, 4.9e6),
                };
                rows.push(
                    Row::from_run("4", "replay", &setup, &run, "consumers").against(
                        "Iggy consume",
                        low,
                        high,
                    ),
                );
            }
            let _ = tidelog(&tidelog_bin, &broker, &["topic", "delete", replay_topic]);
        }
        let args = strings(&[
            "consume",
            "--partitions",
            "8",
            "--consumers",
            "8",
            "--producers",
            "2",
            "--stream",
            "--ack",
            "written",
            "--fsync",
            "never",
            "--messages",
            &messages,
        ]);
        let run = bench(&tidelog_bin, &broker, &args)?;
        rows.push(
            Row::from_run(
                "4",
                "replay",
                "8 consumers, 8 partitions divided among them",
                &run,
                "consumers",
            )
            .against("Iggy consume", 4.9e6, 4.9e6)
            .noted("the CPU figures include filling the topic first (not timed)"),
        );
    }

    // 5. Latency at half the 1-producer durable rate.
    if wanted(5) {
        eprintln!("scenario 5: latency at 50% of scenario 1's 1-producer stream rate");
        let target = (one_producer_rate.unwrap_or(200_000.0) / 2.0).round() as u64;
        let duration = if options.quick { "5s" } else { "15s" };
        for kind in ["produce", "e2e"] {
            let args = strings(&[
                kind,
                "--producers",
                "1",
                "--message-size",
                "100",
                "--batch",
                "1000",
                "--stream",
                "--ack",
                "durable",
                "--fsync",
                "always",
                "--rate",
                &target.to_string(),
                "--duration",
                duration,
            ]);
            let run = bench(&tidelog_bin, &broker, &args)?;
            let (setup, side) = if kind == "produce" {
                (
                    format!("1 producer at {}, publish -> ack", rate(target as f64)),
                    "producers",
                )
            } else {
                (
                    format!(
                        "1 producer + 1 consumer at {}, publish -> receive",
                        rate(target as f64)
                    ),
                    "consumers",
                )
            };
            let mut row = Row::from_run("5", "durable latency", &setup, &run, side);
            row.note = format!(
                "achieved {}",
                rate(
                    run.json["producers"]["total"]["messages_per_s"]
                        .as_f64()
                        .unwrap_or(0.0)
                )
            );
            rows.push(row);
        }
    }

    // 6. 1000 partitions.
    if wanted(6) {
        eprintln!("scenario 6: 1000 partitions, 8 producers, durable");
        let mut args = base(8);
        args.extend(strings(&[
            "--ack",
            "durable",
            "--fsync",
            "always",
            "--stream",
            "--partitions",
            "1000",
        ]));
        let run = bench(&tidelog_bin, &broker, &args)?;
        let mut row = Row::from_run(
            "6",
            "1000 partitions",
            "8 producers, stream, each request to the next partition",
            &run,
            "producers",
        );
        if let (Some(many), Some(one)) = (row.messages_per_s, eight_producer_rate) {
            row.target = format!("1 partition: {}", rate(one));
            row.verdict = format!("{:.2}x of 1 partition", many / one);
        }
        rows.push(row);
    }

    // 8. zstd vs none on JSON-like payloads.
    if wanted(8) {
        eprintln!("scenario 8: zstd vs none, 1 KiB JSON-like messages");
        let mut none_bytes = None;
        for compression in ["none", "zstd"] {
            let topic = format!("scenario-8-{compression}");
            let args = strings(&[
                "produce",
                "--producers",
                "2",
                "--message-size",
                "1KiB",
                "--batch",
                "1000",
                "--stream",
                "--payload",
                "json",
                "--compression",
                compression,
                "--ack",
                "durable",
                "--fsync",
                "always",
                "--messages",
                &kib_messages,
                "--topic",
                &topic,
                "--keep",
            ]);
            let run = bench(&tidelog_bin, &broker, &args)?;
            let count = run.json["producers"]["total"]["messages"]
                .as_u64()
                .unwrap_or(0);
            let bytes = dir_bytes(&data.join("topics").join(&topic));
            let per = bytes as f64 / count.max(1) as f64;
            let mut row = Row::from_run(
                "8",
                "compression",
                &format!("{compression}, 1 KiB JSON-like, 2 producers, stream, durable"),
                &run,
                "producers",
            );
            row.note = format!("{per:.0} disk bytes per 1024 B message");
            if compression == "none" {
                none_bytes = Some(per);
            } else if let Some(none) = none_bytes {
                row.note
                    .push_str(&format!(" ({:.1}x smaller than none)", none / per.max(1.0)));
            }
            extra.insert(
                format!("disk_bytes_per_1kib_json_message_{compression}"),
                json!(per.round()),
            );
            rows.push(row);
            let _ = tidelog(&tidelog_bin, &broker, &["topic", "delete", &topic]);
        }
    }

    broker.stop();

    // 7. Recovery, on a broker of its own.
    if wanted(7) {
        eprintln!(
            "scenario 7: recovery after kill -9 with {} GiB written",
            options.recovery_gib
        );
        let data = temp.path().join("recovery-data");
        let mut broker = Broker::start(&tidelogd, &data, &log)?;
        let count = (options.recovery_gib * 1024.0 * 1024.0).round() as u64; // 1 KiB messages
        let args = strings(&[
            "produce",
            "--producers",
            "2",
            "--message-size",
            "1KiB",
            "--batch",
            "1000",
            "--stream",
            "--ack",
            "written",
            "--fsync",
            "never",
            "--messages",
            &count.to_string(),
            "--topic",
            "recovery",
            "--keep",
        ]);
        let run = bench(&tidelog_bin, &broker, &args)?;
        let written = run.json["producers"]["total"]["messages"]
            .as_u64()
            .unwrap_or(0);
        let log_bytes = dir_bytes(&data.join("topics/recovery"));
        broker.kill9();
        let started = Instant::now();
        let mut broker = Broker::start(&tidelogd, &data, &log)?;
        let ready = broker.ready_after;
        // The first served request: a topic description (retried until it answers).
        let mut served = None;
        let mut described = Value::Null;
        while started.elapsed() < Duration::from_secs(600) {
            if let Ok(text) = tidelog(
                &tidelog_bin,
                &broker,
                &["--json", "topic", "describe", "recovery"],
            ) {
                served = Some(started.elapsed());
                described = serde_json::from_str(&text).unwrap_or(Value::Null);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let recovered: u64 = described["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["end_offset"].as_u64()).sum())
            .unwrap_or(0);
        broker.stop();
        let gib = log_bytes as f64 / f64::from(1u32 << 30);
        let served_s = served.map(|d| d.as_secs_f64());
        rows.push(Row {
            id: "7".into(),
            scenario: "recovery".into(),
            setup: format!("kill -9 after {gib:.2} GiB (fsync never), restart"),
            target: "-".into(),
            verdict: format!(
                "ready after {:.2}s; first request served after {}",
                ready.as_secs_f64(),
                served_s.map_or("never".into(), |s| format!("{s:.2}s"))
            ),
            note: format!("{recovered} of {written} acked messages readable after recovery"),
            valid: Some(recovered == written),
            ..Row::default()
        });
        extra.insert(
            "recovery".into(),
            json!({
                "log_gib": gib,
                "messages_written": written,
                "messages_recovered": recovered,
                "ready_seconds": ready.as_secs_f64(),
                "first_request_seconds": served_s,
            }),
        );
    }

    // Results.
    let table = markdown(&rows, cores);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let document = json!({
        "suite": "tidelog scenarios (issue 5)",
        "unix_time": stamp,
        "quick": options.quick,
        "messages_per_100b_run": options.messages,
        "machine": machine(),
        "loadavg_at_start": load_at_start,
        "disk": disk,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "extra": extra,
        "suite_seconds": suite_started.elapsed().as_secs_f64(),
    });
    let header = format!(
        "Disk ceiling (same sitting, {probe_mib} MiB): sequential 1 MiB write + fdatasync {disk_mib_s:.1} MiB/s ({disk_mb_s:.1} MB/s); 4 KiB fdatasync p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms.\n\n",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
    );
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("creating {}: {e}", options.out.display()))?;
    let legend = "CPU server+client: CPU seconds of tidelogd and of `tidelog bench` during the run, and their share of all cores over the run's wall time. CPU per msg: (server + client CPU) / messages; in parentheses the rate all cores could carry at that cost with nothing else running. CPU wait: share of the run's wall time in which some runnable task waited for a CPU (Linux PSI), i.e. contention from other processes on the machine.\n";
    let markdown_text = format!("{header}{table}\n{legend}");
    for name in [format!("scenarios-{stamp}"), "latest".to_string()] {
        let md = options.out.join(format!("{name}.md"));
        let js = options.out.join(format!("{name}.json"));
        std::fs::write(&md, &markdown_text)
            .map_err(|e| format!("writing {}: {e}", md.display()))?;
        let pretty = serde_json::to_string_pretty(&document).unwrap_or_default();
        std::fs::write(&js, pretty).map_err(|e| format!("writing {}: {e}", js.display()))?;
    }
    println!("{markdown_text}");
    println!(
        "suite took {:.0}s; results in {}/latest.{{md,json}}",
        suite_started.elapsed().as_secs_f64(),
        options.out.display()
    );
    if rows.iter().any(|r| r.valid == Some(false)) {
        return Err("a run failed validation (see the table)".into());
    }
    Ok(())
}
