//! Every connection's logs carry its span: `conn{conn_id=.. peer=..}`.

mod support;

use support::{Captured, TestServer, config};
use zinx::{Layout, Request, Router, Server};

// One thread: the subscriber set for this test sees the server's tasks.
#[tokio::test]
async fn a_handlers_log_line_names_its_connection_and_peer() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start(Server::builder(config()).router(Router::new().route(
        1,
        |req: Request| async move {
            tracing::warn!("handler says hi");
            req.conn().try_send(1, "ok")
        },
    )))
    .await;
    let mut client = server.connect(Layout::Tlv).await;
    let local = client.writer.local_addr().unwrap();
    client.roundtrip(1, "x").await;
    drop(client);
    server.stop().await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("handler says hi"))
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    assert!(
        line.contains(&format!("conn{{conn_id=1 peer={local}}}")),
        "{line}"
    );
}
