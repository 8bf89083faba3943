//! TLS on tidelogd's ports, through the real binaries, with certificates made at test
//! time (rcgen; nothing checked in):
//!
//! - the authorization matrix and the revocation of an open stream over TLS + tokens;
//! - mutual TLS: a client certificate's CN is the principal (a token wins), no
//!   certificate or one from another CA is refused; the CLI's --ca-file/--cert/--tls-key
//!   and its errors;
//! - a plaintext client on the TLS port fails with a message saying so, the broker
//!   unharmed;
//! - SIGHUP reloads the files while an open Subscribe keeps receiving; a bad file
//!   keeps the old ones;
//! - the metrics port over HTTPS and its bearer token;
//! - connection limits, in total and per client IP.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls_pki_types::pem::PemObject;
use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    ListTopicsRequest, Message, PublishRequest, SubscribeRequest, TopicConfig, WhoAmIRequest,
    subscribe_response,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::{
    allow, authorization_matrix, bootstrap_token, create_topic, revocation_ends_open_streams,
    with_token,
};

/// A CA and the files of the certificates it signed, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `NAME.pem` and `NAME.key`: a certificate with subject CN `cn` (none when
    /// empty), for the server (SANs localhost and 127.0.0.1) or a client.
    fn issue(&self, name: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        // rcgen's default subject is a CN of its own: replaced, or left empty.
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A TLS channel to `broker` trusting `ca_pem`, with a client certificate when given.
async fn tls_channel(
    broker: &TestBroker,
    ca_pem: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    tls_endpoint(broker, ca_pem, identity).connect().await
}

fn tls_endpoint(broker: &TestBroker, ca_pem: &str, identity: Option<(&Path, &Path)>) -> Endpoint {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{}", broker.grpc_addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(config)
        .unwrap()
}

/// The full cause chain of an error, for asserting on messages.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        text.push_str(": ");
        text.push_str(&source.to_string());
        current = source.source();
    }
    text
}

fn start_tls(pki: &Pki, extra: &[&str]) -> TestBroker {
    let (cert, key) = pki.issue("server", "localhost", true);
    let mut args = vec!["--tls-cert", s(&cert), "--tls-key", s(&key)];
    args.extend_from_slice(extra);
    TestBroker::start_with(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_and_revocation_hold_over_tls() {
    let pki = Pki::new("test-ca");
    let broker = start_tls(&pki, &["--auth"]);
    let channel = tls_channel(&broker, &pki.ca_pem(), None).await.unwrap();
    let bootstrap = bootstrap_token(&broker);
    authorization_matrix(&channel, &bootstrap).await;
    revocation_ends_open_streams(&channel, &bootstrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_makes_the_certificate_cn_the_principal_and_refuses_other_cas() {
    let pki = Pki::new("test-ca");
    let other = Pki::new("other-ca");
    let (client_cert, client_key) = pki.issue("client", "svc-orders", false);
    let (stranger_cert, stranger_key) = other.issue("stranger", "svc-orders", false);
    let broker = start_tls(&pki, &["--auth", "--tls-client-ca", s(&pki.path("ca.pem"))]);
    let bootstrap = bootstrap_token(&broker);

    let channel = tls_channel(&broker, &pki.ca_pem(), Some((&client_cert, &client_key)))
        .await
        .unwrap();
    let by_cert = with_token(&channel, None);
    let me = AccessClient::new(by_cert.clone())
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.principal.as_str(), me.token_id.as_str()),
        ("svc-orders", "")
    );
    // The rules apply to the certificate's principal.
    let admin = with_token(&channel, Some(&bootstrap));
    create_topic(&admin, "orders").await;
    let publish = async || {
        PublisherClient::new(by_cert.clone())
            .publish(PublishRequest {
                topic: "orders".into(),
                messages: vec![Message {
                    value: "v".into(),
                    ..Message::default()
                }],
                ..PublishRequest::default()
            })
            .await
    };
    let denied = publish().await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("principal svc-orders may not publish topic:orders")
    );
    allow(&admin, "svc-orders", "topic:orders", "publish").await;
    publish().await.unwrap();
    // A token on the same connection wins over the certificate.
    let me = AccessClient::new(admin.clone())
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "admin");
    let bad_token = with_token(&channel, Some("tidelog_0000000000000000_AAAA"));
    let status = AccessClient::new(bad_token)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A certificate of the CA without a subject CN: refused, and told why (not asked for
    // a token as if it had sent no certificate).
    let (nameless_cert, nameless_key) = pki.issue("nameless", "", false);
    let nameless = tls_channel(
        &broker,
        &pki.ca_pem(),
        Some((nameless_cert.as_path(), nameless_key.as_path())),
    )
    .await
    .unwrap();
    let status = AccessClient::new(nameless)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate's subject CN"),
        "{status:?}"
    );

    // No certificate, or one from another CA: no call gets through.
    for (who, identity) in [
        ("no client certificate", None),
        (
            "another CA's certificate",
            Some((stranger_cert.as_path(), stranger_key.as_path())),
        ),
    ] {
        let outcome = match tls_channel(&broker, &pki.ca_pem(), identity).await {
            Err(error) => Err(chain(&error)),
            Ok(channel) => AccessClient::new(channel)
                .who_am_i(WhoAmIRequest {})
                .await
                .map(drop)
                .map_err(|status| chain(&status)),
        };
        let error = outcome.expect_err(who);
        // The broker's alert, or (when the client reads the close first) the close, or
        // (when hyper sees the close before its connection is ready) "not ready".
        assert!(
            error.contains("CertificateRequired")
                || error.contains("UnknownCA")
                || error.contains("BadCertificate")
                || error.contains("alert")
                || error.contains("connection closed")
                || error.contains("connection was not ready"),
            "{who}: {error}"
        );
    }

    // The CLI: --ca-file, --cert, --tls-key (or --key before the command); its errors say which flag to pass.
    let server = format!("https://{}", broker.grpc_addr());
    let run = |args: &[&str]| {
        let output = tidelog_command()
            .args(["--server", &server])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let ca = pki.path("ca.pem");
    let (code, stdout, stderr) = run(&[
        "--ca-file",
        s(&ca),
        "--cert",
        s(&client_cert),
        "--key",
        s(&client_key),
        "--json",
        "auth",
        "whoami",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"svc-orders\""), "{stdout}");
    // A bare host:port is https:// when TLS flags are given (tidelog-client's rule);
    // with an explicit http:// the flags are refused rather than ignored.
    let bare = |scheme: &str| {
        tidelog_command()
            .args(["--server", &format!("{scheme}{}", broker.grpc_addr())])
            .args(["--ca-file", s(&ca), "--cert", s(&client_cert)])
            // --tls-key after the command (global); `--key` before it, above, is its
            // old name.
            .args(["--json", "auth", "whoami", "--tls-key", s(&client_key)])
            .output()
            .unwrap()
    };
    let output = bare("");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"svc-orders\""));
    let output = bare("http://");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not https://"), "{stderr}");
    let (code, _, stderr) = run(&[
        "--cert",
        s(&client_cert),
        "--key",
        s(&client_key),
        "auth",
        "whoami",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["--ca-file", s(&ca), "auth", "whoami"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("pass --cert and --tls-key"), "{stderr}");
    let (code, _, stderr) = run(&[
        "--ca-file",
        s(&ca),
        "--cert",
        s(&stranger_cert),
        "--key",
        s(&stranger_key),
        "auth",
        "whoami",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("does not accept this client certificate"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&[
        "--ca-file",
        s(&ca),
        "--cert",
        s(&client_cert),
        "auth",
        "whoami",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--cert and --tls-key go together"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_tls_port_is_told_to_use_tls_and_the_broker_goes_on() {
    let pki = Pki::new("test-ca");
    let broker = start_tls(&pki, &[]);
    // tonic over plaintext HTTP/2: the call fails with FAILED_PRECONDITION and the
    // broker's text, every time (the broker answers the call's stream before its
    // GOAWAY, so no client reads the GOAWAY before its call went out and reports a
    // bare "connection closed").
    const TRIES: usize = 5;
    for _ in 0..TRIES {
        let channel = Channel::from_shared(format!("http://{}", broker.grpc_addr()))
            .unwrap()
            .connect()
            .await
            .expect("the HTTP/2 handshake completes");
        let status = AdminClient::new(channel)
            .list_topics(ListTopicsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("this port speaks TLS; connect with https://"),
            "{status:?}"
        );
    }
    // The CLI says what to do.
    let output = tidelog_command()
        .args([
            "--server",
            &format!("http://{}", broker.grpc_addr()),
            "topic",
            "list",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("use --server https://"), "{stderr}");
    // HTTP/1 gets a 400 saying so; garbage is closed.
    let mut http1 = tokio::net::TcpStream::connect(broker.grpc_addr())
        .await
        .unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), http1.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("speaks TLS"),
        "{answer}"
    );
    let mut garbage = tokio::net::TcpStream::connect(broker.grpc_addr())
        .await
        .unwrap();
    garbage.write_all(&[0u8; 64]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    drop((http1, garbage));
    // The broker serves TLS clients as before and counted the refusals.
    let channel = tls_channel(&broker, &pki.ca_pem(), None).await.unwrap();
    AdminClient::new(channel)
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap();
    // Each tonic try, the CLI, HTTP/1 and garbage: each counted once the broker closed
    // it.
    let expected = TRIES as f64 + 3.0;
    let started = Instant::now();
    loop {
        let metrics = https_get(&broker, &pki.ca_pem(), "/metrics", None).await;
        let refused = metric_value(
            &metrics,
            "tidelog_connections_refused_total{reason=\"plaintext_on_tls\"}",
        );
        if refused.is_some_and(|n| n >= expected) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `path` from the metrics port over HTTPS; returns the whole response.
async fn https_get(broker: &TestBroker, ca_pem: &str, path: &str, token: Option<&str>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(broker.metrics_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_speaks_tls_and_wants_its_token() {
    let pki = Pki::new("test-ca");
    let token_file = pki.path("metrics.token");
    std::fs::write(&token_file, "scrape-0123456789abcdef\n").unwrap();
    let broker = start_tls(&pki, &["--metrics-token-file", s(&token_file)]);
    let refused = https_get(&broker, &pki.ca_pem(), "/metrics", None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("WWW-Authenticate: Bearer"), "{refused}");
    let wrong = https_get(
        &broker,
        &pki.ca_pem(),
        "/metrics",
        Some("scrape-nope-nope-nope"),
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let ok = https_get(
        &broker,
        &pki.ca_pem(),
        "/metrics",
        Some("scrape-0123456789abcdef"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("tidelog_connections_open"), "{ok}");
    // Plain HTTP to the TLS metrics port is told to use TLS.
    let (status, body) = tidelog_tests::http_get(broker.metrics_addr(), "/metrics");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("speaks TLS"), "{body}");
}

fn sighup(broker: &TestBroker) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_while_an_open_subscribe_keeps_receiving() {
    let first = Pki::new("first-ca");
    let second = Pki::new("second-ca");
    let (cert, key) = first.issue("server", "localhost", true);
    let broker = TestBroker::start_with(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let old = tls_channel(&broker, &first.ca_pem(), None).await.unwrap();
    let conn = with_token(&old, None);
    create_topic(&conn, "orders").await;
    let mut stream = ConsumerClient::new(old.clone())
        .subscribe(SubscribeRequest {
            topic: "orders".into(),
            ..SubscribeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let publish = |channel: Channel, value: &'static str| async move {
        PublisherClient::new(channel)
            .publish(PublishRequest {
                topic: "orders".into(),
                messages: vec![Message {
                    value: value.into(),
                    ..Message::default()
                }],
                ..PublishRequest::default()
            })
            .await
            .unwrap();
    };
    let mut next_value = async || loop {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message within 5 s")
            .expect("the stream goes on")
            .expect("the stream goes on");
        if let Some(subscribe_response::Event::Batch(batch)) = item.event
            && let Some(message) = batch.messages.first()
        {
            return String::from_utf8_lossy(&message.value).to_string();
        }
    };
    publish(old.clone(), "before").await;
    assert_eq!(next_value().await, "before");

    // The second CA's certificate replaces the first's in the same files.
    let (new_cert, new_key) = second.issue("server2", "localhost", true);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    sighup(&broker);
    let started = Instant::now();
    let fresh = loop {
        if let Ok(channel) = tls_channel(&broker, &second.ca_pem(), None).await {
            break channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stale = tls_channel(&broker, &first.ca_pem(), None)
        .await
        .unwrap_err();
    assert!(chain(&stale).contains("UnknownIssuer"), "{}", chain(&stale));
    // The stream opened before the reload receives what is published after it.
    publish(fresh.clone(), "after").await;
    assert_eq!(next_value().await, "after");

    // A bad key: the reload fails, says why, and the current files stay in use.
    std::fs::write(&key, "not a key").unwrap();
    sighup(&broker);
    let started = Instant::now();
    while !broker.log().contains("reload failed") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(broker.log().contains("--tls-key"), "{}", broker.log());
    let again = tls_channel(&broker, &second.ca_pem(), None).await.unwrap();
    publish(again, "still").await;
    assert_eq!(next_value().await, "still");
    let metrics = https_get(&broker, &second.ca_pem(), "/metrics", None).await;
    assert_eq!(
        metric_value(&metrics, "tidelog_tls_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "tidelog_tls_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
}

/// A plaintext channel from `local` (an address in 127/8) that has made one call.
async fn connected_from(broker: &TestBroker, local: &str) -> Result<Channel, String> {
    let local: IpAddr = local.parse().unwrap();
    let channel = Endpoint::from_shared(broker.endpoint())
        .unwrap()
        .local_address(Some(local))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| chain(&e))?;
    AdminClient::new(channel.clone())
        .list_topics(ListTopicsRequest::default())
        .await
        .map_err(|status| chain(&status))?;
    Ok(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_refused_and_counted() {
    let broker =
        TestBroker::start_with(&["--max-connections", "3", "--max-connections-per-ip", "2"]);
    let a1 = connected_from(&broker, "127.0.0.1").await.unwrap();
    let a2 = connected_from(&broker, "127.0.0.1").await.unwrap();
    connected_from(&broker, "127.0.0.1").await.unwrap_err();
    let b1 = connected_from(&broker, "127.0.0.2").await.unwrap();
    connected_from(&broker, "127.0.0.3").await.unwrap_err();
    // (A refused channel may try its connection more than once.)
    let metrics = broker.metrics_text();
    for reason in ["max_connections_per_ip", "max_connections"] {
        let refused = metric_value(
            &metrics,
            &format!("tidelog_connections_refused_total{{reason=\"{reason}\"}}"),
        );
        assert!(refused.is_some_and(|n| n >= 1.0), "{reason}: {refused:?}");
    }
    assert_eq!(
        metric_value(&metrics, "tidelog_connections_open"),
        Some(3.0)
    );
    // A closed connection gives its place back.
    drop(a1);
    let started = Instant::now();
    let a3 = loop {
        if let Ok(channel) = connected_from(&broker, "127.0.0.1").await {
            break channel;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for channel in [a2, a3, b1] {
        AdminClient::new(channel)
            .list_topics(ListTopicsRequest::default())
            .await
            .unwrap();
    }
}

/// On a TLS port, a connection in its handshake holds a place within the limits, and
/// `tidelog_connections_open` counts it: the gauge never reads below what refuses the
/// next connection. A failed handshake gives the place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_their_tls_handshake_count_in_the_gauge_they_fill() {
    let pki = Pki::new("test-ca");
    let broker = start_tls(&pki, &["--max-connections-per-ip", "2"]);
    let ca = pki.ca_pem();
    let open = async |broker: &TestBroker| {
        let text = https_get(broker, &ca, "/metrics", None).await;
        metric_value(&text, "tidelog_connections_open").unwrap_or(-1.0)
    };
    // Two sockets that send nothing: their handshakes wait.
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(broker.grpc_addr()).unwrap())
        .collect();
    let started = Instant::now();
    loop {
        let gauge = open(&broker).await;
        if gauge == 2.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gauge {gauge} with two handshakes under way"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third is refused, as the gauge says it must be.
    let third = tls_channel(&broker, &ca, None).await;
    assert!(third.is_err(), "a third connection from the same IP");
    // Closed without a handshake: the places come back, and the gauge with them.
    drop(idle);
    let started = Instant::now();
    loop {
        let gauge = open(&broker).await;
        if gauge == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gauge {gauge} after the sockets closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_protects_a_plaintext_metrics_port_too() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "plain-scrape-0123456789\n").unwrap();
    let broker = TestBroker::start_with(&["--metrics-token-file", s(&token_file)]);
    let (status, body) = tidelog_tests::http_get(broker.metrics_addr(), "/metrics");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("--metrics-token-file"), "{body}");
    let get = |authorization: &str| {
        let mut stream = std::net::TcpStream::connect(broker.metrics_addr()).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(get("Bearer plain-scrape-0123456789").starts_with("HTTP/1.1 200"));
    assert!(get("Bearer plain-scrape-012345678").starts_with("HTTP/1.1 401"));
    assert!(get("Basic cGxhaW4=").starts_with("HTTP/1.1 401"));
    // A new token on SIGHUP; the old one stops working.
    std::fs::write(&token_file, "plain-scrape-rotated-42\n").unwrap();
    sighup(&broker);
    let started = Instant::now();
    while !get("Bearer plain-scrape-rotated-42").starts_with("HTTP/1.1 200") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(get("Bearer plain-scrape-0123456789").starts_with("HTTP/1.1 401"));
}

/// The Rust client (tidelog-client) over TLS: the CA and a token, mutual TLS with its
/// identity as the principal, and a broker certificate from another CA refused as
/// `Error::Tls` rather than retried as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_speaks_tls_with_a_token_and_with_a_client_certificate() {
    use tidelog_client::{Client, ClientOptions, Error, Producer, ProducerConfig, Record};
    let pki = Pki::new("test-ca");
    let other = Pki::new("other-ca");
    let (client_cert, client_key) = pki.issue("client", "svc-client", false);
    let broker = start_tls(&pki, &["--auth", "--tls-client-ca", s(&pki.path("ca.pem"))]);
    let bootstrap = bootstrap_token(&broker);
    let url = format!("https://{}", broker.grpc_addr());
    let read = |path: &Path| std::fs::read(path).unwrap();

    // The CA, a client certificate (the broker wants one) and the admin token.
    let admin = Client::connect_with(
        &url,
        ClientOptions::default()
            .ca_pem(pki.ca_pem())
            .identity(read(&client_cert), read(&client_key))
            .token(bootstrap.clone()),
    )
    .await
    .expect("connect over TLS");
    admin
        .create_topic("tls-t", 1, TopicConfig::default())
        .await
        .expect("CreateTopic over TLS");
    let producer = Producer::new(&admin, ProducerConfig::default());
    let placed = producer
        .send_and_wait(Record::new("tls-t", "over tls"))
        .await
        .expect("publish over TLS");
    assert_eq!((placed.partition, placed.offset), (0, Some(0)));
    producer.close().await.expect("close");

    // Without the token, the certificate's CN is the principal, and the ACLs apply to
    // it: refused until rules name it.
    let by_cert = Client::connect_with(
        &url,
        ClientOptions::default()
            .ca_pem(pki.ca_pem())
            .identity(read(&client_cert), read(&client_key)),
    )
    .await
    .expect("connect with a client certificate");
    let producer = Producer::new(&by_cert, ProducerConfig::default());
    let refused = producer
        .send_and_wait(Record::new("tls-t", "x"))
        .await
        .expect_err("svc-client may do nothing yet");
    assert!(
        matches!(refused, Error::PermissionDenied { .. }),
        "{refused}"
    );
    drop(producer);
    let admin_conn = with_token(
        &tls_channel(&broker, &pki.ca_pem(), Some((&client_cert, &client_key)))
            .await
            .unwrap(),
        Some(&bootstrap),
    );
    // The producer describes the topic (its partitions) before it publishes.
    allow(&admin_conn, "svc-client", "topic:tls-t", "describe").await;
    allow(&admin_conn, "svc-client", "topic:tls-t", "publish").await;
    let producer = Producer::new(&by_cert, ProducerConfig::default());
    let placed = producer
        .send_and_wait(Record::new("tls-t", "by certificate"))
        .await
        .expect("publish as the certificate's principal");
    assert_eq!(placed.offset, Some(1));
    producer.close().await.expect("close");

    // A client that trusts another CA refuses the broker's certificate: a settings
    // error, not "unreachable".
    let error = Client::connect_with(
        &url,
        ClientOptions::default()
            .ca_pem(other.ca_pem())
            .identity(read(&client_cert), read(&client_key)),
    )
    .await
    .expect_err("the broker's certificate is not from other-ca");
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(!error.is_retryable(), "{error}");
}
