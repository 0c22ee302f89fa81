//! `MaxConnPerIP`: connections from one address beyond the limit are closed at
//! once, other addresses are still served, and a slot comes back when a connection
//! ends.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use support::{RawClient, TestServer, config, echo, within};
use tokio::net::TcpSocket;
use zinx::{Config, Layout, Router, Server};

async fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let stream = within("connect", socket.connect(addr)).await.unwrap();
    RawClient::from_stream(stream, Layout::Tlv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_conn_per_ip_are_closed_and_others_unaffected() {
    let server = TestServer::start(
        Server::builder(Config {
            max_conn_per_ip: 2,
            ..config()
        })
        .router(Router::new().route(1, echo)),
    )
    .await;
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let mut a = connect_from(server.addr, one).await;
    let mut b = connect_from(server.addr, one).await;
    assert_eq!(&a.roundtrip(1, "a").await.data[..], b"a");
    assert_eq!(&b.roundtrip(1, "b").await.data[..], b"b");
    // A third from the same address is closed at once...
    let c = connect_from(server.addr, one).await;
    assert!(c.read_eof().await);
    // ...while another address is served.
    let mut d = connect_from(server.addr, two).await;
    assert_eq!(&d.roundtrip(1, "d").await.data[..], b"d");
    // A slot comes back when a connection ends.
    drop(a);
    let manager = server.handle.manager();
    within("a's connection to end", async {
        while manager.len() > 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut e = connect_from(server.addr, one).await;
    assert_eq!(&e.roundtrip(1, "e").await.data[..], b"e");
    drop((b, d, e));
    server.stop().await;
}
