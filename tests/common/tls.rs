//! TLS fixtures: a self-signed certificate written as PEM files, a client that trusts it, and a
//! gateway that terminates TLS with it.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use switchyard::{Gateway, GatewayOptions, TlsFiles};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files in `dir`.
pub fn write_certificate(dir: &Path, name: &str) -> (TlsFiles, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec![
        "localhost".into(),
        "127.0.0.1".into(),
        name.into(),
    ])
    .expect("generate a certificate");
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    // Written beside and renamed into place, as cert-manager's volume would swap them.
    for (path, pem) in [
        (&files.cert, certified.cert.pem()),
        (&files.key, certified.key_pair.serialize_pem()),
    ] {
        let temp = path.with_extension("tmp");
        std::fs::File::create(&temp)
            .and_then(|mut f| f.write_all(pem.as_bytes()))
            .expect("write PEM");
        std::fs::rename(&temp, path).expect("rename PEM");
    }
    (files, certified.cert.der().clone())
}

/// A client configuration that trusts `trusted` only.
pub fn client_config(trusted: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("trust the test certificate");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A gateway for the file at `path` that terminates TLS with a certificate of its own, and
/// that certificate.
pub struct TlsGateway {
    pub gateway: Gateway,
    pub cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TlsGateway {
    /// A TLS gateway in front of the one instance at `url`, and its endpoint file, which must
    /// live as long as it.
    pub async fn for_instance(url: &str) -> (super::EndpointFile, Self) {
        let file = super::EndpointFile::new(&super::endpoint_yaml(&[("blue", 100, &[url])]));
        let gateway = TlsGateway::start(&file.path).await;
        (file, gateway)
    }

    pub async fn start(path: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, cert) = write_certificate(dir.path(), "gateway");
        let mut options = GatewayOptions::new(path, super::loopback());
        options.tls = Some(files);
        let gateway = Gateway::start(options).await.expect("start the gateway");
        TlsGateway {
            gateway,
            cert,
            _dir: dir,
        }
    }

    /// A TLS connection to the gateway that offers no application protocol, as curl and most
    /// HTTP/1.1 clients of a model do: the gateway speaks HTTP/1.1 on it.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
            std::slice::from_ref(&self.cert),
        )));
        let tcp = TcpStream::connect(self.gateway.addr())
            .await
            .expect("connect");
        connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }
}
