//! How the gateway reaches instances over HTTP/2, built once for the traffic and the readiness
//! probes alike, so that what passes a probe (TLS roots, ALPN, protocol) is what serves.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP/2 client to instances: h2c with prior knowledge for `http://`, h2 by ALPN for
/// `https://`.
pub type Http2Client<B> = Client<HttpsConnector<HttpConnector>, B>;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// An HTTP/2 client verifying `https://` instances with `tls`.
pub fn http2_client<B>(tls: rustls::ClientConfig) -> Http2Client<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    // The TLS layer above decides which schemes are allowed.
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .http2_only(true)
        .build(connector)
}

/// The name a certificate must carry for `host`: an IPv6 literal without its URL brackets.
pub fn tls_server_name(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}
