//! TLS (`turns:`) listeners: rustls on the ring provider, TLS 1.2 and 1.3.
//!
//! Every worker's listener of one `[[listen]]` entry shares one [`Acceptor`],
//! whose certificate and key can be swapped while the server runs
//! ([`Acceptor::reload`], on SIGHUP): connections made afterwards get the
//! new certificate, established ones keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use super::conn::Watched;

/// Why a certificate or key could not be loaded: which of the two
/// (`"cert"` or `"key"`), and the reason, which names the file.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub key: &'static str,
    pub reason: String,
}

impl LoadError {
    /// `reason` about the certificate file `path`.
    pub fn cert(path: &Path, reason: impl fmt::Display) -> LoadError {
        LoadError {
            key: "cert",
            reason: format!("{}: {reason}", path.display()),
        }
    }

    /// `reason` about the key file `path`.
    pub fn key(path: &Path, reason: impl fmt::Display) -> LoadError {
        LoadError {
            key: "key",
            reason: format!("{}: {reason}", path.display()),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// A rustls server configuration for the PEM certificate chain in `cert`
/// and the PEM private key (PKCS#8, PKCS#1 or SEC1) in `key`.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, LoadError> {
    let cert_err = |reason: String| LoadError::cert(cert, reason);
    let key_err = |reason: String| LoadError::key(key, reason);
    // Read the files ourselves first: pki-types reports a missing file as
    // a bare I/O error without the path or a clear reason.
    let cert_pem = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM CERTIFICATE block found".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM PRIVATE KEY block found (PKCS#8, RSA or EC)".into()
            }
            e => format!("not a PEM private key: {e}"),
        })
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| cert_err(format!("TLS setup: {e}")))?
        .with_no_client_auth();
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_err(format!(
                "does not match the certificate in {}",
                cert.display()
            )),
            e @ rustls::Error::General(_) => key_err(format!("unusable private key: {e}")),
            e => cert_err(format!("unusable certificate or key: {e}")),
        })?;
    // RFC 7443: offer "stun.turn". A client that sends no ALPN is served;
    // one that offers only other protocols is refused by rustls with a
    // no_application_protocol alert (RFC 7301 §3.2).
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(config))
}

/// The ALPN protocol ID of TURN and STUN over TLS (RFC 7443 §5).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// The TLS acceptor of one `[[listen]]` entry, shared by every worker.
/// Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<Loaded>>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    cert: PathBuf,
    key: PathBuf,
}

impl Acceptor {
    /// Load the certificate and key of a listener.
    pub fn new(cert: &Path, key: &Path) -> Result<Acceptor, LoadError> {
        Ok(Acceptor {
            current: Arc::new(RwLock::new(Loaded {
                config: load(cert, key)?,
                cert: cert.to_owned(),
                key: key.to_owned(),
            })),
        })
    }

    /// Read the certificate and key in `cert` and `key` (again) and use
    /// them for new connections; on error the current ones stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), LoadError> {
        let config = load(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            config,
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        Ok(())
    }

    /// The certificate and key files in use.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let l = self.current.read().unwrap_or_else(|e| e.into_inner());
        (l.cert.clone(), l.key.clone())
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// Run the TLS handshake on `stream`, for at most `limit`
    /// (`stream_message_timeout`: the handshake is the connection's first
    /// exchange); a [`std::io::ErrorKind::TimedOut`] error after that.
    pub async fn accept(
        &self,
        stream: Watched,
        limit: Duration,
    ) -> std::io::Result<TlsStream<Watched>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Err(e)) if is_alpn_refusal(&e) => Err(std::io::Error::new(
                e.kind(),
                "the client offers ALPN protocols but not \"stun.turn\" (RFC 7443): refused",
            )),
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Whether a handshake failed because the client offered no protocol we
/// speak.
fn is_alpn_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| *e == rustls::Error::NoApplicationProtocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_reason() {
        let dir = std::env::temp_dir().join(format!("ferroturn-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();

        let e = load(&missing, &garbage).unwrap_err();
        assert_eq!(e.key, "cert");
        assert!(e.reason.contains("missing.pem"), "{e}");
        assert!(e.reason.contains("No such file"), "{e}");

        let e = load(&garbage, &garbage).unwrap_err();
        assert_eq!(e.key, "cert");
        assert!(e.reason.contains("garbage.pem"), "{e}");
        assert!(e.reason.contains("no PEM CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
