//! tidelogd: the tidelog broker. See `tidelogd --help` and the `tidelog_server` docs.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use tidelog_server::config::{Cli, Settings};
use tidelog_server::log_writer::Lossy;
use tidelog_server::shutdown::Shutdown;
use tracing_subscriber::EnvFilter;

/// The broker's allocator (see ARCHITECTURE.md, "Memory").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let settings = match Settings::load(Cli::parse()) {
        Ok(settings) => settings,
        Err(error) => {
            report(format_args!("tidelogd: {error}"));
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&settings.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            report(format_args!(
                "tidelogd: log level {:?}: {error}",
                settings.log_level
            ));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line stderr refuses (EPIPE once a pipe's reader has gone) is dropped:
        // logging must never stop serving or shutting down. See `log_writer`.
        .with_writer(Lossy(std::io::stderr))
        // Colour codes only for a terminal, not for log files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Each partition keeps its active segment and checkpoint open: a broker with many
    // partitions needs more descriptors than the usual soft limit of 1024. Raise it
    // to the hard limit, as Kafka's docs ask operators to.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tidelogd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report(format_args!(
                "tidelogd: cannot start the async runtime: {error}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        tidelog_server::server::run(settings, shutdown, |bound| {
            let mut stdout = std::io::stdout().lock();
            // The harness and scripts wait for this line; flush it at once.
            let _ = writeln!(stdout, "{}", bound.ready_line());
            let _ = stdout.flush();
        })
        .await
    });
    match result {
        Ok(()) => {
            tracing::info!("tidelogd stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "tidelogd failed");
            report(format_args!("tidelogd: {error}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr; unlike `eprintln!`, does not panic when stderr is gone.
fn report(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Fires `shutdown` on SIGINT or SIGTERM: first the trigger, then the log line, so
/// whatever happens to the log write cannot keep the broker from stopping.
async fn wait_for_signal(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops tidelogd");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.trigger();
            tracing::info!("SIGINT: shutting down");
            return;
        }
    };
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    shutdown.trigger();
    tracing::info!("{name}: shutting down");
}
