//! Every connection's logs carry its span: `conn{conn_id=.. peer=..}`.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{TestServer, config};
use tracing_subscriber::fmt::MakeWriter;
use zinx::{Layout, Request, Router, Server};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

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
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handler says hi"))
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    assert!(
        line.contains(&format!("conn{{conn_id=1 peer={local}}}")),
        "{line}"
    );
}
