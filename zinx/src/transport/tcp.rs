//! TCP: the listener is a `TcpListener`, and opening a connection is splitting
//! it (no handshake), done by the accept loop at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::config::Config;
use crate::error::Error;
use crate::transport::{Accept, Connect, Dialled, Open, OpenNow, Opened};

/// The TCP transport: no handshake.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tcp;

impl Accept for TcpListener {
    type Raw = TcpStream;

    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Readies a connected stream for any transport over TCP: `TCP_NODELAY`
/// (replies go out at once); its local address.
pub(crate) fn prepare(stream: &TcpStream) -> io::Result<SocketAddr> {
    let _ = stream.set_nodelay(true);
    stream.local_addr()
}

/// Dials `addr` and [`prepare`]s the stream: it, the peer's address and the
/// local one.
pub(crate) async fn dial(addr: &str) -> io::Result<(TcpStream, SocketAddr, SocketAddr)> {
    let stream = TcpStream::connect(addr).await?;
    let local = prepare(&stream)?;
    let peer = stream.peer_addr()?;
    Ok((stream, peer, local))
}

/// Splits a stream for the engine.
pub(crate) fn open(stream: TcpStream) -> io::Result<Opened<OwnedReadHalf, OwnedWriteHalf>> {
    let local = prepare(&stream)?;
    let (read, write) = stream.into_split();
    Ok(Opened { read, write, local })
}

impl Open<TcpStream> for Tcp {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn open_now(&self, raw: TcpStream) -> OpenNow<OwnedReadHalf, OwnedWriteHalf, TcpStream> {
        match open(raw) {
            Ok(opened) => OpenNow::Opened(opened),
            Err(e) => OpenNow::Failed(e),
        }
    }

    async fn open(
        &self,
        raw: TcpStream,
        _peer: SocketAddr,
    ) -> Result<Opened<OwnedReadHalf, OwnedWriteHalf>, Error> {
        Ok(open(raw)?)
    }
}

/// Dials a TCP address (`host:port`).
#[derive(Debug, Clone)]
pub(crate) struct TcpConnector {
    pub(crate) addr: String,
}

impl Connect for TcpConnector {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn target(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<Dialled<OwnedReadHalf, OwnedWriteHalf>, Error> {
        let (stream, peer, local) = dial(&self.addr).await?;
        let (read, write) = stream.into_split();
        Ok(Dialled {
            opened: Opened { read, write, local },
            peer,
        })
    }
}

/// Binds a TCP listener on `addr` with a listen backlog of `backlog` (0: the
/// system's limit, see [`listen_backlog`]), so a burst of connects waits in the
/// kernel's queue instead of being refused. (tokio's `TcpListener::bind` uses
/// 128.) `keys` names the config keys `addr` comes from, for the error.
///
/// # Errors
///
/// [`Error::Listen`], naming the address and its keys, when it does not
/// resolve or no address of it can be bound.
pub(crate) async fn bind(
    addr: &str,
    backlog: u32,
    keys: &'static str,
) -> Result<TcpListener, Error> {
    let failed = |source| Error::Listen {
        addr: addr.to_owned(),
        keys,
        source,
    };
    let backlog = match backlog {
        0 => listen_backlog(),
        n => n,
    };
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await.map_err(failed)? {
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let bound = socket.and_then(|socket| {
            // As tokio and Go do: a restarted server can bind at once.
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(resolved)?;
            socket.listen(backlog)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no address found")
    })))
}

/// Binds the config's `Host:TCPPort` with its `ListenBacklog` (0: the system's
/// limit, see [`listen_backlog`]; tokio's `TcpListener::bind` uses 128), so a
/// burst of connects waits in the kernel's queue instead of being refused.
///
/// # Errors
///
/// [`Error::Listen`], naming the address and `Host, TCPPort`.
pub async fn bind_tcp(config: &Config) -> Result<TcpListener, Error> {
    bind(&config.tcp_addr(), config.listen_backlog, "Host, TCPPort").await
}

/// The system's limit on a listen queue: `net.core.somaxconn` on Linux (read
/// as Go reads it), else 4096; at most 65,535.
#[must_use]
pub fn listen_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
        .min(65_535)
}
