//! TLS over TCP (feature `tls`): rustls, with ring as its one crypto provider.
//!
//! Every rustls config here is built with the provider named
//! ([`builder_with_provider`](rustls::ServerConfig::builder_with_provider)),
//! never from a process-level default: with none installed, or with two
//! providers compiled into one program, rustls would panic or refuse at the
//! first handshake.
//!
//! The server's listener is TCP's; its open step is the handshake, which runs
//! in the connection's own task under `HandshakeTimeout` (see
//! [`transport`](super)), so a peer that connects and says nothing holds one
//! `MaxConn` slot until then and stalls nobody. A failed handshake closes that
//! connection and is counted as a peer's fault (a DEBUG line with the peer, and
//! at most one WARN summary per 10 s), so a scanner cannot flood the log.
//!
//! The client dials TCP, then shakes hands within `HandshakeTimeout`, naming
//! the server by the host part of the address it dials: a DNS name, or an IP
//! address, which the server's certificate must list among its subject
//! alternative names.
//!
//! # Examples
//!
//! A server speaking TLS on `Host:TCPPort` (what [`Server::serve`] does when
//! `CertFile` and `PrivateKeyFile` are set), and a client trusting its
//! certificate:
//!
//! ```no_run
//! use zinx::transport::Listener;
//! use zinx::transport::tls::{TlsClient, TlsServer};
//! use zinx::{Client, Config, Server};
//!
//! # async fn demo() -> Result<(), zinx::Error> {
//! let tls = TlsServer::from_pem_files("cert.pem", "key.pem")?;
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! let server = Server::builder(Config::default()).build();
//! tokio::spawn(server.run(Listener::tls(tcp, tls), std::future::pending()));
//!
//! let client = Client::builder("127.0.0.1:8443")
//!     .tls(TlsClient::trust_pem_file("cert.pem")?)
//!     .connect()
//!     .await?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! [`Server::serve`]: crate::Server::serve

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::error::Error;
use crate::transport::{Connect, Dialled, Open, Opened};

pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The one crypto provider, named wherever a config is built.
///
/// rustls 0.23.48 deprecates ring's provider because it has no post-quantum
/// key exchange (aws-lc-rs has; a peer offering it falls back to X25519 with
/// ring). ring stays the one provider for now: it builds with a C compiler
/// alone and is the smaller of the two. Moving is this function and the
/// features in Cargo.toml.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An [`Error::Tls`].
fn tls_error(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Tls {
        context: context.into(),
        source: source.into(),
    }
}

/// Reads a PEM file; `what` names it in the error (`CertFile "cert.pem"`).
fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| tls_error(format!("cannot read {what}"), e))
}

/// The certificates of a PEM text, in order (a chain: the server's first).
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{what} is not valid PEM"), e))?;
    if certs.is_empty() {
        return Err(tls_error(
            format!("{what} holds no certificate"),
            "no \"BEGIN CERTIFICATE\" section",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => tls_error(
            format!("{what} holds no private key"),
            "no \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" section",
        ),
        e => tls_error(format!("{what} is not valid PEM"), e),
    })
}

/// What a server needs for TLS: its certificate chain and private key, in a
/// rustls config built with the ring provider. Cheap to clone.
///
/// Pass it to [`Listener::tls`](crate::transport::Listener::tls), or set
/// `CertFile` and `PrivateKeyFile` and let [`Server::serve`](crate::Server::serve)
/// make it.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsServer {
    /// Reads the certificate chain (PEM, the server's certificate first, then
    /// any intermediates) and its private key (PEM: PKCS#8, PKCS#1 or SEC1), as
    /// Go Zinx's `CertFile` and `PrivateKeyFile`.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming the file (as its config key, `CertFile` or
    /// `PrivateKeyFile`) when it cannot be read, holds no certificate or key,
    /// or the key does not match the certificate.
    pub fn from_pem_files(
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<TlsServer, Error> {
        let (cert_file, key_file) = (cert_file.as_ref(), key_file.as_ref());
        let cert_what = format!("CertFile {cert_file:?}");
        let key_what = format!("PrivateKeyFile {key_file:?}");
        let certs = certificates(&read(cert_file, &cert_what)?, &cert_what)?;
        let key = private_key(&read(key_file, &key_what)?, &key_what)?;
        TlsServer::new(certs, key, &format!("{cert_what} with {key_what}"))
    }

    /// [`from_pem_files`](Self::from_pem_files) with the PEM texts themselves
    /// (say, from `include_bytes!` or a secret store).
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](Self::from_pem_files).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsServer, Error> {
        let certs = certificates(cert_chain, "the certificate PEM")?;
        let key = private_key(key, "the private key PEM")?;
        TlsServer::new(certs, key, "the certificate PEM with the private key PEM")
    }

    fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        what: &str,
    ) -> Result<TlsServer, Error> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| tls_error(format!("cannot use {what}"), e))?;
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

/// The open step: the server's handshake, then the stream split for the
/// engine (both halves share it behind a lock: reading and writing TLS
/// touch the same session).
impl Open<TcpStream> for TlsServer {
    type Read = ReadHalf<ServerStream>;
    type Write = WriteHalf<ServerStream>;

    async fn open(
        &self,
        raw: TcpStream,
        _peer: SocketAddr,
    ) -> Result<Opened<ReadHalf<ServerStream>, WriteHalf<ServerStream>>, Error> {
        let local = crate::transport::tcp::prepare(&raw)?;
        let (read, write) = tokio::io::split(self.accept(raw).await?);
        Ok(Opened { read, write, local })
    }
}

impl TlsServer {
    /// The server's side of the handshake on `raw` (the caller bounds its time).
    pub(crate) async fn accept(&self, raw: TcpStream) -> Result<ServerStream, Error> {
        // The peer is in the fault's log line already.
        self.acceptor
            .accept(raw)
            .await
            .map_err(|e| tls_error("handshake failed", e))
    }
}

/// What a client needs for TLS: which servers it trusts (the platform's
/// roots, given certificates, or, for tests only, any), and optionally the
/// name to check the server's certificate against. Cheap to clone.
///
/// Pass it to [`ClientBuilder::tls`](crate::ClientBuilder::tls).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Trusts the certificate authorities the platform trusts (on Linux the
    /// system's bundle; `SSL_CERT_FILE` and `SSL_CERT_DIR` replace it).
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when no usable root certificate is found.
    pub fn platform_roots() -> Result<TlsClient, Error> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _unusable) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), std::string::ToString::to_string);
            return Err(tls_error("no platform root certificates", why));
        }
        TlsClient::trusting(roots)
    }

    /// Trusts exactly the certificates of a PEM file (a private CA's, or a
    /// self-signed server's own), and nothing else.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming the file when it cannot be read, holds no
    /// certificate, or one of its certificates cannot be a trust anchor.
    pub fn trust_pem_file(path: impl AsRef<Path>) -> Result<TlsClient, Error> {
        let path = path.as_ref();
        let what = format!("CA file {path:?}");
        TlsClient::trust(&read(path, &what)?, &what)
    }

    /// [`trust_pem_file`](Self::trust_pem_file) with the PEM text itself.
    ///
    /// # Errors
    ///
    /// As [`trust_pem_file`](Self::trust_pem_file).
    pub fn trust_pem(pem: &[u8]) -> Result<TlsClient, Error> {
        TlsClient::trust(pem, "the CA PEM")
    }

    fn trust(pem: &[u8], what: &str) -> Result<TlsClient, Error> {
        let mut roots = RootCertStore::empty();
        for (n, cert) in certificates(pem, what)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                let context = format!("certificate {} of {what} cannot be trusted", n + 1);
                tls_error(context, e)
            })?;
        }
        TlsClient::trusting(roots)
    }

    fn trusting(roots: RootCertStore) -> Result<TlsClient, Error> {
        let config = client_config(provider())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient::from_config(config))
    }

    /// **For tests only: no security.** Accepts any certificate from any
    /// server, so whoever sits between the client and the server can read and
    /// change everything. The handshake still checks that the server holds the
    /// key of the certificate it shows, but not who it is.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if the crypto provider cannot do TLS 1.2 or 1.3 (ring
    /// does both).
    pub fn danger_accept_any_certificate() -> Result<TlsClient, Error> {
        let provider = provider();
        let config = client_config(provider.clone())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TlsClient::from_config(config))
    }

    fn from_config(config: rustls::ClientConfig) -> TlsClient {
        TlsClient {
            config: Arc::new(config),
            server_name: None,
        }
    }

    /// Checks the server's certificate against `name` (a DNS name or an IP
    /// address) instead of the host part of the address dialled: for a
    /// server dialled by IP address whose certificate names a host.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when `name` is neither a DNS name nor an IP address.
    pub fn server_name(mut self, name: &str) -> Result<TlsClient, Error> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }

    /// The connector for `addr` (`host:port`), checking the server's
    /// certificate against the server name or `addr`'s host.
    pub(crate) fn connector(
        &self,
        addr: String,
        handshake: Duration,
    ) -> Result<TlsConnector, Error> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => parse_server_name(host_of(&addr))?,
        };
        Ok(TlsConnector {
            addr,
            name,
            handshake,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        })
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A client config's builder with the one provider and TLS 1.2 and 1.3.
fn client_config(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, Error> {
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("cannot set up the client", e))
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| tls_error(format!("{name:?} is no server name"), e))
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Dials a TLS server: TCP, then the handshake within `handshake`.
pub(crate) struct TlsConnector {
    addr: String,
    name: ServerName<'static>,
    handshake: Duration,
    connector: tokio_rustls::TlsConnector,
}

impl Connect for TlsConnector {
    type Read = ReadHalf<ClientStream>;
    type Write = WriteHalf<ClientStream>;

    fn target(&self) -> &str {
        &self.addr
    }

    async fn connect(
        &self,
    ) -> Result<Dialled<ReadHalf<ClientStream>, WriteHalf<ClientStream>>, Error> {
        let (stream, peer, local) = self.dial().await?;
        let (read, write) = tokio::io::split(stream);
        Ok(Dialled {
            opened: Opened { read, write, local },
            peer,
        })
    }
}

impl TlsConnector {
    /// Dials TCP and shakes hands within the handshake timeout: the stream,
    /// the peer's address and the local one.
    pub(crate) async fn dial(&self) -> Result<(ClientStream, SocketAddr, SocketAddr), Error> {
        let (stream, peer, local) = crate::transport::tcp::dial(&self.addr).await?;
        let context = || {
            let name = self.name.to_str();
            format!("handshake with {peer} as {name:?}")
        };
        let handshake = self.connector.connect(self.name.clone(), stream);
        let stream = match tokio::time::timeout(self.handshake, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(tls_error(context(), e)),
            Err(_) => {
                let why = format!("not done within {:?} (HandshakeTimeout)", self.handshake);
                return Err(tls_error(context(), why));
            }
        };
        Ok((stream, peer, local))
    }
}

/// The verifier of [`TlsClient::danger_accept_any_certificate`]: every
/// certificate is accepted, but the handshake's signatures are still checked
/// (with the provider's algorithms), so the server must hold the key of the
/// certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9000"), "::1");
        assert_eq!(host_of("game.example.com:443"), "game.example.com");
        assert!(matches!(
            parse_server_name(host_of("[::1]:9000")),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            parse_server_name(host_of("localhost:1")),
            Ok(ServerName::DnsName(_))
        ));
        assert!(parse_server_name("not a name").is_err_and(|e| e.is_tls()));
    }

    #[test]
    fn pem_without_a_certificate_or_key_says_so() {
        let what = "CertFile \"x.pem\"";
        let no_cert = certificates(b"nothing here", what).map(|_| ());
        let text = no_cert.map_or_else(|e| e.to_string(), |()| String::new());
        assert!(
            text.contains("CertFile \"x.pem\" holds no certificate"),
            "{text}"
        );
        let no_key = private_key(b"nothing here", "PrivateKeyFile \"k.pem\"").map(|_| ());
        let text = no_key.map_or_else(|e| e.to_string(), |()| String::new());
        assert!(
            text.contains("PrivateKeyFile \"k.pem\" holds no private key"),
            "{text}"
        );
    }
}
