//! TLS for the gRPC and metrics ports (`--tls-cert`, `--tls-key`, `--tls-client-ca`)
//! and the metrics port's bearer token (`--metrics-token-file`), re-read on SIGHUP.
//!
//! rustls 0.23 with the ring provider. The files are PEM: the certificate chain
//! (leaf first), the private key (PKCS#8, PKCS#1 or SEC1), and for mutual TLS the CAs
//! whose client certificates are accepted. With a client CA, every gRPC connection
//! must present a certificate that chains to it (the metrics port never asks for
//! one: a scraper authenticates with the metrics token).
//!
//! [`Security`] holds what was loaded behind a lock; [`crate::listener`] takes the
//! current configuration for each new handshake, so a reload applies to new
//! connections and leaves open ones (and their streams) as they are. A reload that
//! fails (a missing file, a key that does not match, a PEM without a certificate)
//! keeps the old configuration and logs why; `tidelog_tls_reloads{result}` counts both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The files given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key of the leaf (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA certificates for client certificates (`--tls-client-ca`): mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Longest metrics token file read (a token is a line of text).
const METRICS_TOKEN_FILE_BYTES_MAX: u64 = 4096;
/// Shortest metrics token accepted: a guessable token protects nothing.
pub const METRICS_TOKEN_CHARS_MIN: usize = 16;

/// One loaded generation of the files.
#[derive(Debug)]
struct Loaded {
    grpc: Option<Arc<ServerConfig>>,
    metrics: Option<Arc<ServerConfig>>,
    metrics_token_sha256: Option<[u8; 32]>,
}

/// The TLS configurations and the metrics token, reloadable.
#[derive(Debug)]
pub struct Security {
    tls: Option<TlsFiles>,
    metrics_token_file: Option<PathBuf>,
    current: RwLock<Arc<Loaded>>,
}

impl Security {
    /// Loads the files (blocking: file reads). An error names the file and says what
    /// to fix.
    pub fn load(
        tls: Option<TlsFiles>,
        metrics_token_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let loaded = load(tls.as_ref(), metrics_token_file.as_deref())?;
        Ok(Security {
            tls,
            metrics_token_file,
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// No TLS, no metrics token.
    pub fn plaintext() -> Self {
        Security {
            tls: None,
            metrics_token_file: None,
            current: RwLock::new(Arc::new(Loaded {
                grpc: None,
                metrics: None,
                metrics_token_sha256: None,
            })),
        }
    }

    /// Whether the ports speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether gRPC clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The configuration for the next gRPC handshake (`None`: plaintext).
    pub fn grpc(&self) -> Option<Arc<ServerConfig>> {
        self.current().grpc.clone()
    }

    /// The configuration for the next metrics handshake (`None`: plaintext).
    pub fn metrics(&self) -> Option<Arc<ServerConfig>> {
        self.current().metrics.clone()
    }

    /// Whether a metrics request with this `Authorization` header value may scrape.
    /// True when no metrics token is configured.
    pub fn metrics_authorized(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = self.current().metrics_token_sha256 else {
            return true;
        };
        let Some(token) = authorization.map(str::trim).and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        bool::from(hash.ct_eq(&expected))
    }

    /// Re-reads every file (blocking). On error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = load(self.tls.as_ref(), self.metrics_token_file.as_deref())?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(())
    }
}

fn load(tls: Option<&TlsFiles>, metrics_token_file: Option<&Path>) -> Result<Loaded, String> {
    let (grpc, metrics) = match tls {
        None => (None, None),
        Some(files) => {
            let (grpc, metrics) = server_configs(files)?;
            (Some(Arc::new(grpc)), Some(Arc::new(metrics)))
        }
    };
    let metrics_token_sha256 = metrics_token_file.map(read_metrics_token).transpose()?;
    Ok(Loaded {
        grpc,
        metrics,
        metrics_token_sha256,
    })
}

fn read_metrics_token(path: &Path) -> Result<[u8; 32], String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(METRICS_TOKEN_FILE_BYTES_MAX)
                .read_to_string(&mut text)
        })
        .map_err(|e| format!("--metrics-token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < METRICS_TOKEN_CHARS_MIN || token.chars().any(char::is_whitespace) {
        return Err(format!(
            "--metrics-token-file {}: the token must be one word of at least \
             {METRICS_TOKEN_CHARS_MIN} characters (e.g. `openssl rand -hex 32 > FILE`)",
            path.display()
        ));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (a PEM file with -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The gRPC (ALPN h2, client certificates when a client CA is given) and metrics
/// (ALPN http/1.1, no client certificates) configurations.
fn server_configs(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), String> {
    let certs = read_certs("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "--tls-key {}: no usable private key ({e}); give a PEM PKCS#8, PKCS#1 or SEC1 key",
            files.key.display()
        )
    })?;
    let provider = provider();
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))
    };
    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("--tls-client-ca", path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?
        }
    };
    let key_error = |e: rustls::Error| {
        format!(
            "--tls-cert {} / --tls-key {}: {e}; give the key of the certificate's first entry",
            files.cert.display(),
            files.key.display()
        )
    };
    let mut grpc = builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(key_error)?;
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut metrics = builder()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(key_error)?;
    metrics.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((grpc, metrics))
}

/// The principal of a client certificate: its subject's first common name (CN).
/// `None` when the certificate cannot be parsed or has no UTF-8 CN; the handshake
/// has already verified it against the client CA.
pub fn certificate_principal(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_load_reload_and_a_bad_file_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &ca.cert.pem());
        let key = write(dir.path(), "key.pem", &ca.signing_key.serialize_pem());
        let token = write(dir.path(), "metrics.token", "0123456789abcdef0123\n");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(cert.clone()),
        };
        let security = Security::load(Some(files.clone()), Some(token.clone())).unwrap();
        assert!(security.is_tls() && security.is_mutual());
        let first = security.grpc().unwrap();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(security.metrics_authorized(Some("Bearer 0123456789abcdef0123")));
        assert!(!security.metrics_authorized(Some("Bearer 0123456789abcdef0124")));
        assert!(!security.metrics_authorized(None));
        assert!(!security.metrics_authorized(Some("Basic x")));

        // A key that is not PEM: the reload fails, naming the flag; the old config stays.
        write(dir.path(), "key.pem", "not a key");
        let error = security.reload().unwrap_err();
        assert!(error.contains("--tls-key"), "{error}");
        assert!(Arc::ptr_eq(&first, &security.grpc().unwrap()));
        // Another key than the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        write(dir.path(), "key.pem", &other.serialize_pem());
        let error = security.reload().unwrap_err();
        assert!(error.contains("--tls-cert"), "{error}");
        // A certificate file without a certificate.
        write(dir.path(), "key.pem", &ca.signing_key.serialize_pem());
        write(dir.path(), "cert.pem", "");
        let error = security.reload().unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
        // Good files again, and a new metrics token.
        write(dir.path(), "cert.pem", &ca.cert.pem());
        write(dir.path(), "metrics.token", "fedcba9876543210fedcba");
        security.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &security.grpc().unwrap()));
        assert!(security.metrics_authorized(Some("Bearer fedcba9876543210fedcba")));
        assert!(!security.metrics_authorized(Some("Bearer 0123456789abcdef0123")));

        write(dir.path(), "metrics.token", "short");
        let error = Security::load(None, Some(token)).unwrap_err();
        assert!(error.contains("at least 16"), "{error}");
    }

    #[test]
    fn the_principal_is_the_subject_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc-orders");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_principal(cert.der()).as_deref(),
            Some("svc-orders")
        );
        let no_cn = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        let mut no_cn = no_cn;
        no_cn.distinguished_name = rcgen::DistinguishedName::new();
        let cert = no_cn.self_signed(&key).unwrap();
        assert_eq!(certificate_principal(cert.der()), None);
        assert_eq!(certificate_principal(b"garbage"), None);
    }
}
