//! The transports the load generator and the baseline speak besides plain TCP:
//! TLS (rustls with ring, the one crypto provider, named wherever a config is
//! built) and WebSocket (tungstenite), and a throw-away certificate for
//! loopback. Written here rather than taken from zinx, like the framing: the
//! yardstick shares no code with the framework it measures.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;

use futures_util::{Stream, StreamExt};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_tungstenite::tungstenite;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// Zinx frames on TCP.
    #[default]
    Tcp,
    /// Zinx frames on TLS over TCP.
    Tls,
    /// Zinx frames in binary WebSocket messages.
    Ws,
    /// Zinx frames in binary WebSocket messages over TLS.
    Wss,
    /// Zinx frames over KCP (reliable UDP), with Go Zinx's default `Kcp*`
    /// settings: the load generator only (zinx-baseline has no KCP server;
    /// scripts/bench-kcp.sh compares KCP with TCP on one zinx server).
    Kcp,
}

impl Transport {
    /// True for the transports that shake hands with TLS.
    #[must_use]
    pub fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// The one crypto provider. rustls 0.23.48 deprecates ring's provider (it has
/// no post-quantum key exchange); zinx uses ring, so its yardstick does too.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM file at `path`.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A client config that trusts the certificate(s) of the PEM file `ca`, or with
/// `ca` `None`, any certificate at all (`--insecure`; signatures are still
/// checked, so the handshake costs what it costs).
pub fn tls_client_config(ca: Option<&Path>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?;
    let config = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The name a client asks the server for: the host part of `host:port` (a DNS
/// name, or an IP address the certificate must list).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("TLS server name {host:?}: {e}"))
}

/// A server config presenting the certificate chain in `cert` with the key in
/// `key` (PEM files).
pub fn tls_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("TLS server: {e}"))
}

/// Accepts any certificate, checking only the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A WebSocket error as the I/O error it stands for: the peer closing (with or
/// without the closing handshake) is an end of stream, so a failed connection
/// is counted under the same reason on every transport.
#[must_use]
pub fn ws_io_error(e: tungstenite::Error) -> io::Error {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed
        | Error::AlreadyClosed
        | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            io::Error::new(io::ErrorKind::UnexpectedEof, e)
        }
        Error::Http(response) => io::Error::other(format!(
            "WebSocket upgrade refused: HTTP {}",
            response.status()
        )),
        e => io::Error::other(e),
    }
}

/// The WebSocket settings of the client and the baseline: tungstenite's, but
/// reading at most 8 KiB at a time, as zinx does. Its default, 128 KiB, is
/// zeroed before every read: tens of thousands of instructions per ping-pong
/// reply that would make the yardstick look slow.
#[must_use]
pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// The next item of `stream` if it is there already, `None` if it would have to
/// wait. Polled with the task's own waker (unlike `now_or_never`'s no-op one),
/// so the wake-up a `Pending` registers is the task's.
pub async fn next_now<S: Stream + Unpin>(stream: &mut S) -> Option<Option<S::Item>> {
    std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
        Poll::Ready(item) => Poll::Ready(Some(item)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Writes `cert.pem` and `key.pem` into `dir` (made if missing): a self-signed
/// end-entity certificate (not a CA, which rustls refuses as a server's) for
/// 127.0.0.1 and localhost, with a fresh P-256 key.
pub fn write_loopback_certificate(dir: &Path) -> Result<(), String> {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (file, pem) in [
        ("cert.pem", certified.cert.pem()),
        ("key.pem", certified.signing_key.serialize_pem()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
