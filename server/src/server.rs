//! Starting and stopping the broker: open the store, bind the sockets, announce the
//! addresses, serve until SIGINT/SIGTERM, then stop gracefully.
//!
//! Shutdown order: the signal marks every service NOT_SERVING on the health service
//! and fires [`Shutdown`]; the gRPC server stops accepting connections and waits for
//! in-flight calls (long polls answer, Subscribe streams end with UNAVAILABLE,
//! publish streams answer what they already appended) for at most
//! `shutdown_timeout`; then the store is closed (flush, index files, checkpoints), so
//! the next start scans nothing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tidelog_proto::v1::access_server::AccessServer;
use tidelog_proto::v1::admin_server::AdminServer;
use tidelog_proto::v1::groups_server::GroupsServer;
use tidelog_proto::v1::messages_server::MessagesServer;
use tidelog_proto::v1::queues_server::QueuesServer;
use tidelog_storage::{Store, StoreOptions, SystemClock};
use tokio::net::TcpListener;

use crate::admin::AdminService;
use crate::auth::service::AccessService;
use crate::config::{Bound, Settings};
use crate::consume::ConsumerService;
use crate::groups::{GroupCoordinator, GroupsService};
use crate::metrics::{GroupMetricsSource, Metrics};
use crate::publish::PublisherService;
use crate::shutdown::Shutdown;
use crate::{AppState, partitioner};

/// HTTP/2 keepalive: pings find dead connections (and so dead group members) even
/// when nothing is sent.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may make the server reset for its protocol errors before
/// it is closed (h2's and hyper's own default).
const HTTP2_LOCAL_ERROR_RESETS_MAX: usize = 1024;
/// grpc.health.v1 entry that is NOT_SERVING while a partition recovery refused to
/// open is served as unavailable (the services themselves keep serving).
pub const PARTITIONS_HEALTH_NAME: &str = "tidelog.partitions";

/// Runs the broker until `shutdown` fires, calling `on_ready` once it is listening.
pub async fn run(
    settings: Settings,
    shutdown: Shutdown,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    let options = StoreOptions {
        clock: Arc::new(SystemClock),
        flush_threads: settings.flush_threads,
        // Retention runs from a tokio interval below, so it can be counted.
        retention_interval: None,
        flush_observer: Some(metrics.flush_observer()),
        max_timestamp_ahead_ms: settings
            .max_timestamp_ahead
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ..StoreOptions::default()
    };
    let data_dir = settings.data_dir.clone();
    // Opening recovers every partition: file I/O and fsyncs.
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, options))
        .await
        .map_err(|e| format!("opening the store failed: {e}"))?
        .map_err(|e| {
            let advice = if e.is_out_of_descriptors() {
                format!(
                    "; tidelogd ran out of file descriptors opening it: raise its hard \
                     open-file limit (ulimit -n, systemd LimitNOFILE) to at least twice its \
                     {} partitions plus connections plus some spare",
                    Store::partitions_on_disk(&settings.data_dir)
                )
            } else {
                String::new()
            };
            format!(
                "cannot open data directory {}: {e}{advice}",
                settings.data_dir.display()
            )
        })?;
    let store = Arc::new(store);
    metrics.set_store(&store);
    let auth = if settings.auth {
        let data_dir = settings.data_dir.clone();
        let bootstrap = settings.auth_bootstrap_token_file.clone();
        tokio::task::spawn_blocking(move || crate::auth::Auth::open(&data_dir, &bootstrap))
            .await
            .map_err(|e| format!("opening the access state failed: {e}"))??
    } else {
        crate::auth::Auth::disabled()
    };
    let audit = match &settings.audit_log {
        Some(path) => crate::auth::audit::AuditSink::file(path)?,
        None => crate::auth::audit::AuditSink::log(),
    };
    let auth = Arc::new(auth.with_metrics(metrics.clone()).with_audit(audit));
    if settings.insecure_allow_network_plaintext
        && !(settings.listen.ip().is_loopback() && settings.metrics_listen.ip().is_loopback())
    {
        tracing::warn!(
            listen = %settings.listen,
            metrics_listen = %settings.metrics_listen,
            auth = settings.auth,
            tls = settings.tls.is_some(),
            metrics_token = settings.metrics_token_file.is_some(),
            "--insecure-allow-network-plaintext: listening beyond loopback; without TLS \
             tokens and messages cross the network in clear, without --auth anyone who \
             reaches the port may do anything"
        );
    }
    let groups = Arc::new(GroupCoordinator::new(store.clone(), store.clock().clone()));
    let group_source: Weak<dyn GroupMetricsSource> = Arc::downgrade(&groups) as _;
    metrics.set_group_source(group_source);
    let queues = Arc::new(crate::queues::QueueManager::new(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Leases from before this start end now, before anything is served.
    queues.start_leased().await;
    let queue_source: Weak<dyn crate::metrics::QueueMetricsSource> = Arc::downgrade(&queues) as _;
    metrics.set_queue_source(queue_source);
    let state = Arc::new(AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        config: Arc::new(settings.clone()),
        groups,
        queues: queues.clone(),
        shutdown: shutdown.clone(),
        auth: auth.clone(),
        round_robin: partitioner::RoundRobin::default(),
        topic_changes: crate::read::TopicChanges::default(),
    });

    let tls = settings.tls.clone();
    let metrics_token_file = settings.metrics_token_file.clone();
    let security =
        tokio::task::spawn_blocking(move || crate::tls::Security::load(tls, metrics_token_file))
            .await
            .map_err(|e| format!("loading the TLS files failed: {e}"))??;
    let security = Arc::new(security);

    let result = serve(&settings, &state, &security, on_ready).await;
    shutdown.trigger();

    let closing = store.clone();
    let closed = tokio::task::spawn_blocking(move || closing.close()).await;
    match closed {
        Ok(Ok(())) => tracing::info!("store closed: data flushed, checkpoints written"),
        Ok(Err(error)) => {
            tracing::error!(%error, "closing the store failed");
            result.clone()?;
            return Err(format!("closing the store failed: {error}"));
        }
        Err(error) => return Err(format!("closing the store failed: {error}")),
    }
    result
}

async fn serve(
    settings: &Settings,
    state: &Arc<AppState>,
    security: &Arc<crate::tls::Security>,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), String> {
    let grpc_listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen for gRPC on {}: {e}", settings.listen))?;
    let metrics_listener = TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen for metrics on {}: {e}",
                settings.metrics_listen
            )
        })?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().map_err(|e| e.to_string())?,
        metrics: metrics_listener.local_addr().map_err(|e| e.to_string())?,
        data_dir: std::fs::canonicalize(&settings.data_dir)
            .unwrap_or_else(|_| settings.data_dir.clone()),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in tidelog_proto::SERVICE_NAMES {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // The broker serves even when recovery refused some partitions; this entry tells a
    // health check that asks for it whether every partition opened.
    let all_partitions_open = state
        .store
        .topics()
        .iter()
        .all(|topic| topic.partitions().iter().all(|p| p.unavailable().is_none()));
    health
        .set_service_status(
            PARTITIONS_HEALTH_NAME,
            if all_partitions_open {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            },
        )
        .await;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(tidelog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| format!("building the reflection service failed: {e}"))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| format!("building the reflection service failed: {e}"))?;

    let max = settings.max_request_bytes;
    let router = tonic::transport::Server::builder()
        .layer(crate::request_limit::RequestLimitLayer::new(max))
        .layer(crate::auth::layer::AuthLayer::new(state.auth.clone()))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // tonic announces no limit by default: one connection could pin unbounded
        // memory with streams. Clients queue calls beyond the limit.
        .max_concurrent_streams(settings.max_streams_per_connection)
        // A publish of up to 1 MiB may come in one DATA frame, taken without a copy.
        .max_frame_size(Some(tidelog_proto::frames::MAX_FRAME_BYTES))
        // Stated, not left to hyper's defaults: see STREAM_WINDOW_BYTES for the trade.
        .initial_stream_window_size(Some(tidelog_proto::frames::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(tidelog_proto::frames::CONNECTION_WINDOW_BYTES))
        // tonic turns off h2's cap on streams a client makes the server reset (the
        // "MadeYouReset" flood, CVE-2025-8671); past it the connection gets GOAWAY.
        .http2_max_local_error_reset_streams(Some(HTTP2_LOCAL_ERROR_RESETS_MAX))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AdminServer::new(AdminService::new(state.clone(), bound.clone()))
                .max_decoding_message_size(max),
        )
        // Publish, PublishBatch and PublishStream decoded without copying.
        .add_service(crate::zero_copy::PublisherRoutes::publisher(
            PublisherService::new(state.clone()),
            max,
        ))
        .add_service(
            // FetchBatches and SubscribeBatches answered without copying the batches.
            crate::zero_copy::ConsumerRoutes::consumer(ConsumerService::new(state.clone()), max),
        )
        .add_service(
            GroupsServer::new(GroupsService::new(state.clone())).max_decoding_message_size(max),
        )
        .add_service(
            QueuesServer::new(crate::queues::QueuesService::new(state.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(AccessServer::new(AccessService::new(state.auth.clone())))
        .add_service(
            MessagesServer::new(crate::messages::MessagesService::new(state.clone()))
                .max_decoding_message_size(max),
        );

    let retention = tokio::spawn(retention_loop(state.clone(), settings.retention_interval));
    let metrics_server = tokio::spawn(crate::metrics::serve(
        metrics_listener,
        state.metrics.clone(),
        security.clone(),
        state.shutdown.clone(),
    ));
    let reloader = tokio::spawn(reload_on_sighup(
        security.clone(),
        state.auth.clone(),
        state.metrics.clone(),
        state.shutdown.clone(),
    ));

    let shutdown = state.shutdown.clone();
    let groups = state.groups.clone();
    let group_timeout = settings.shutdown_timeout;
    tokio::spawn(async move {
        shutdown.wait().await;
        for name in tidelog_proto::SERVICE_NAMES {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Group members make their final auto-commits and their streams end, so the
        // gRPC server's graceful shutdown is not held up by them.
        groups.shutdown(group_timeout).await;
    });

    let incoming = crate::listener::incoming(
        grpc_listener,
        security.clone(),
        crate::listener::ConnectionLimits::new(
            settings.max_connections,
            settings.max_connections_per_ip,
        ),
        state.metrics.clone(),
        state.shutdown.clone(),
    );
    let stopping = state.shutdown.clone();
    let serving =
        router.serve_with_incoming_shutdown(incoming, async move { stopping.wait().await });
    tracing::info!(
        grpc = %bound.grpc,
        metrics = %bound.metrics,
        data = %bound.data_dir.display(),
        tls = security.is_tls(),
        mutual_tls = security.is_mutual(),
        "tidelogd is ready"
    );
    on_ready(&bound);

    tokio::pin!(serving);
    let shutdown = state.shutdown.clone();
    let timeout = settings.shutdown_timeout;
    let result = tokio::select! {
        result = &mut serving => result.map_err(|e| format!("the gRPC server failed: {e}")),
        _ = async move {
            shutdown.wait().await;
            tokio::time::sleep(timeout).await;
        } => {
            tracing::warn!(?timeout, "in-flight calls did not finish within the shutdown timeout; closing anyway");
            Ok(())
        }
    };
    state.shutdown.trigger();
    retention.abort();
    reloader.abort();
    let _ = metrics_server.await;
    result
}

/// Re-reads the TLS files and the metrics token, and opens the audit file again, on
/// every SIGHUP until shutdown. A reload that fails keeps the old configuration and
/// says why in the log.
async fn reload_on_sighup(
    security: Arc<crate::tls::Security>,
    auth: Arc<crate::auth::Auth>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: Shutdown,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(
                %error,
                "cannot listen for SIGHUP; the TLS files and the metrics token are not reloaded"
            );
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            received = hangup.recv() => if received.is_none() { return },
        }
        if let Err(error) = auth.reopen_audit() {
            tracing::error!(%error, "SIGHUP: keeping the audit log file open as it was");
        }
        let reloading = security.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => {
                metrics.tls_reload(true);
                tracing::info!(
                    tls = security.is_tls(),
                    "SIGHUP: reloaded the TLS files and the metrics token; new connections use them"
                );
            }
            Ok(Err(error)) => {
                metrics.tls_reload(false);
                tracing::error!(
                    %error,
                    "SIGHUP: reload failed; keeping the previous TLS files and metrics token"
                );
            }
            Err(error) => {
                metrics.tls_reload(false);
                tracing::error!(
                    %error,
                    "SIGHUP: reload failed; keeping the previous TLS files and metrics token"
                );
            }
        }
    }
}

/// Runs retention on every partition every `interval`, on the blocking pool (it
/// unlinks files and fsyncs directories), and counts what it deleted.
async fn retention_loop(state: Arc<AppState>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.shutdown.wait() => return,
        }
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.enforce_retention()).await {
            Ok(outcomes) => {
                let mut retained: Vec<&str> = Vec::new();
                for (topic, _partition, outcome) in &outcomes {
                    state.metrics.retention(topic, outcome);
                    if outcome.segments_deleted > 0 && !retained.contains(&topic.as_str()) {
                        retained.push(topic);
                    }
                }
                for topic in retained {
                    state.queues.topic_retained(topic);
                }
            }
            Err(error) => tracing::error!(%error, "the retention pass failed"),
        }
    }
}
