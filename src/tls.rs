//! TLS for clients: rustls with the `ring` provider, ALPN `h2` and `http/1.1`, and a certificate
//! that is re-read when its files change. Each handshake asks the resolver for the current
//! certificate, so a renewal reaches new connections without touching open ones.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
pub const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the certificate or key.
    #[error("the certificate in {cert} and the key in {key} cannot be used: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The certificate being served, swapped when its files change.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes behind `current`, to notice a change.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate chain and key; fails if either is unusable.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<CertStore>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_bytes, key_bytes) = read_pair(cert_path, key_path)?;
        let key = certified_key(&provider, cert_path, key_path, &cert_bytes, &key_bytes)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(key),
            loaded: std::sync::Mutex::new((cert_bytes, key_bytes)),
        }))
    }

    /// Re-reads the files; swaps in the new certificate if they changed and are valid.
    /// Returns whether a new certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_bytes, key_bytes) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.0 == cert_bytes && loaded.1 == key_bytes {
            return Ok(false);
        }
        let key = certified_key(
            &self.provider,
            &self.cert_path,
            &self.key_path,
            &cert_bytes,
            &key_bytes,
        )?;
        self.current.store(Arc::new(key));
        *loaded = (cert_bytes, key_bytes);
        Ok(true)
    }

    /// A TLS acceptor offering `h2` and `http/1.1`, serving whatever certificate is current.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| self.rustls_error(source))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every [`CERT_POLL_INTERVAL`] for as long as the store is in use.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(CERT_POLL_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(store) = store.upgrade() else { return };
                match store.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %store.cert_path.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::error!(%error, "TLS certificate not reloaded; the previous one keeps serving");
                    }
                }
            }
        })
    }

    fn rustls_error(&self, source: rustls::Error) -> TlsError {
        TlsError::Rustls {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            source,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    cert_bytes: &[u8],
    key_bytes: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, problem: String| TlsError::Pem {
        path: path.to_path_buf(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|error| pem_error(cert_path, format!("not a PEM certificate chain: {error}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_bytes)
        .map_err(|error| pem_error(key_path, format!("no usable PEM private key: {error}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rustls {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })
}

/// How instances reached over `https://` are verified: Mozilla's root certificates (bundled, so no
/// system store is needed), plus the PEM certificates in `extra_ca`, for a private CA.
pub fn upstream_client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let pem_error = |problem: String| TlsError::Pem {
            path: path.to_path_buf(),
            problem,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|error| pem_error(format!("not a PEM certificate: {error}")))?;
        if certs.is_empty() {
            return Err(pem_error("no CERTIFICATE block found".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| pem_error(format!("unusable CA certificate: {error}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| TlsError::Rustls {
        cert: extra_ca.map(Path::to_path_buf).unwrap_or_default(),
        key: PathBuf::new(),
        source,
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}
