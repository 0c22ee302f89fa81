//! The browser module, `zinx/web/zinx.js`, in headless Chromium: `echo.html`
//! connects to the echo example (its WebSocket listener, feature `ws`) in each
//! packet layout, sends msgID 1 and 2 and shows the replies, which are read back
//! from the page's DOM; the same page against a test server that cuts its
//! replies across WebSocket messages, to exercise the module's reassembly;
//! `test.html` runs the module's encode and decode functions against known
//! bytes and every way of cutting a stream.
//!
//! Chromium is found on `PATH` as `chromium` (Debian's package). Without it these
//! tests print a notice and pass, so `cargo test` works with only the Rust
//! toolchain; with `ZINX_REQUIRE_CHROMIUM=1` (set by `.ci/run`) they fail instead.
#![cfg(unix)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use data_encoding::{BASE64, HEXLOWER};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Decoder;
use zinx::{Codec, Layout};

/// What `echo.html` sends, as msgID and text; it must match the page's `greetings`.
const GREETINGS: [(u32, &str); 2] = [
    (1, "hello from the browser"),
    (2, "héllo again ✓ — UTF-8 both ways"),
];

/// The longest one Chromium run may take (start, loads, results, screenshot)
/// before the test fails and kills it: a guard against hangs on a loaded
/// machine, not a performance bound (a run takes about a second).
const CHROMIUM_LIMIT: Duration = Duration::from_secs(30);

/// The `chromium` executable on `PATH`; `None` (after a notice on stderr) when
/// there is none and `ZINX_REQUIRE_CHROMIUM` is not `1`.
fn chromium(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("ZINX_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "{test}: ZINX_REQUIRE_CHROMIUM=1 but no `chromium` on PATH \
             (Debian: apt-get install -y chromium)"
        );
        note(&format!(
            "{test}: skipped, no `chromium` on PATH (set ZINX_REQUIRE_CHROMIUM=1 to fail instead)"
        ));
    }
    found
}

/// Writes to the process's stderr, past the test harness's capture, so that a
/// skip or a screenshot's path shows in a plain `cargo test`.
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn web_page(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web").join(name)
}

/// `target/browser/`, where screenshots and Chromium profiles go.
fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `file://` URL for `path`, percent-encoding what a URL path may not hold.
fn file_url(path: &Path, query: &str) -> String {
    let mut url = String::from("file://");
    for &b in path.to_str().expect("a UTF-8 path").as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push('?');
    url.push_str(query);
    url
}

/// Headless Chromium in a process group of its own, with a fresh profile. Dropping
/// it kills the whole group (renderer and GPU processes too), so a failing or
/// timed-out test leaves nothing running.
struct Browser {
    pid: u32,
    _child: Child,
    profile: PathBuf,
    /// Everything Chromium wrote to stderr, for failure messages.
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    /// Starts Chromium and returns it with the DevTools WebSocket URL it prints
    /// (by `deadline`).
    async fn launch(exe: &Path, name: &str, deadline: tokio::time::Instant) -> (Browser, String) {
        let profile = out_dir().join(format!("profile-{name}"));
        let _ = std::fs::remove_dir_all(&profile);
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                // Screenshots of the page alone, as wide as the viewport.
                "--hide-scrollbars",
                // Chromium refuses ES modules on file:// pages without it (the
                // page says so when it happens).
                "--allow-file-access-from-files",
                // Port 0: Chromium picks a free loopback port and prints it.
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let pid = child.id().expect("chromium's pid");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let browser = Browser {
            pid,
            _child: child,
            profile,
            stderr: stderr.clone(),
        };
        let devtools = tokio::time::timeout_at(deadline, async {
            while let Ok(Some(line)) = lines.next_line().await {
                stderr.lock().unwrap().push_str(&line);
                stderr.lock().unwrap().push('\n');
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        });
        let Ok(Some(devtools)) = devtools.await else {
            panic!(
                "{name}: no DevTools URL from chromium in {CHROMIUM_LIMIT:?}:\n{}",
                stderr.lock().unwrap()
            );
        };
        // Read on, or Chromium blocks once the pipe is full.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                stderr.lock().unwrap().push_str(&line);
                stderr.lock().unwrap().push('\n');
            }
        });
        (browser, devtools)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid)])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A DevTools protocol connection: commands and their replies, with the
/// events that arrive in between kept for [`Cdp::event`].
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to DevTools");
        Cdp {
            ws,
            next_id: 0,
            events: Vec::new(),
        }
    }

    async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("DevTools connection ended: {other:?}"),
            }
        }
    }

    /// Sends `method` (to the page of `session`, or to the browser) and returns
    /// its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.ws
            .send(WsMessage::Text(command.to_string().into()))
            .await
            .unwrap();
        loop {
            let mut msg = self.recv().await;
            if msg["id"] == id {
                assert!(msg["error"].is_null(), "{method}: {}", msg["error"]);
                return msg["result"].take();
            }
            self.events.push(msg);
        }
    }

    /// Waits for the first event `wanted` accepts, or takes it if it came already.
    async fn event(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.events.iter().position(&wanted) {
            return self.events.remove(at);
        }
        loop {
            let msg = self.recv().await;
            if wanted(&msg) {
                return msg;
            }
            self.events.push(msg);
        }
    }
}

/// Evaluated in a page: waits until its `<pre id="results">` holds JSON whose
/// `state` is final, and returns that JSON.
const AWAIT_RESULTS: &str = r#"new Promise((resolve) => {
  const el = document.getElementById("results");
  const check = () => {
    try {
      if (["done", "error", "closed"].includes(JSON.parse(el.textContent).state)) resolve(el.textContent);
    } catch {}
  };
  new MutationObserver(check).observe(el, { childList: true, characterData: true, subtree: true });
  check();
})"#;

/// A JSON text on one line (the pages indent theirs), or `value` as it is.
fn compact(value: &Value) -> String {
    value
        .as_str()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .unwrap_or_else(|| value.clone())
        .to_string()
}

/// What a page ended with: its results, once per load, and a screenshot of
/// the last load.
struct PageRun {
    results: Vec<Value>,
    screenshot: PathBuf,
}

/// Opens `page` (with `query`) in headless Chromium `loads` times, one load after
/// the other, waits for its results each time and saves a screenshot of the last
/// as `target/browser/<name>.png`. Fails, with Chromium's stderr, when it all
/// takes longer than [`CHROMIUM_LIMIT`].
async fn run_page(exe: &Path, name: &str, page: &str, query: &str, loads: usize) -> PageRun {
    let started = Instant::now();
    let url = file_url(&web_page(page), query);
    let deadline = tokio::time::Instant::now() + CHROMIUM_LIMIT;
    let (browser, devtools) = Browser::launch(exe, name, deadline).await;
    let session = async {
        let mut cdp = Cdp::connect(&devtools).await;
        let target = cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let s = attached["sessionId"].as_str().unwrap().to_owned();
        let s = Some(s.as_str());
        cdp.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 820, "height": 560, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        cdp.call(s, "Page.enable", json!({})).await;
        // Lifecycle events name their navigation (loaderId), so a load event
        // of about:blank cannot be taken for the page's.
        cdp.call(
            s,
            "Page.setLifecycleEventsEnabled",
            json!({ "enabled": true }),
        )
        .await;
        let mut texts = Vec::new();
        for _ in 0..loads {
            let nav = cdp.call(s, "Page.navigate", json!({ "url": url })).await;
            assert!(nav["errorText"].is_null(), "{name}: {url}: {nav}");
            cdp.event(|e| {
                e["method"] == "Page.lifecycleEvent"
                    && e["params"]["name"] == "load"
                    && e["params"]["loaderId"] == nav["loaderId"]
            })
            .await;
            let wait = cdp.call(
                s,
                "Runtime.evaluate",
                json!({ "expression": AWAIT_RESULTS, "awaitPromise": true, "returnByValue": true }),
            );
            let Ok(value) = tokio::time::timeout_at(deadline, wait).await else {
                // What the page shows by now says more than the time-out.
                let now =
                    json!({ "expression": "document.getElementById('results')?.textContent" });
                let now = tokio::time::timeout(
                    Duration::from_secs(5),
                    cdp.call(s, "Runtime.evaluate", now),
                )
                .await;
                panic!(
                    "{name}: no final results from {url} after {CHROMIUM_LIMIT:?}; the page has {}",
                    now.map_or("no answer".into(), |v| compact(&v["result"]["value"]))
                );
            };
            assert!(
                value["exceptionDetails"].is_null(),
                "{name}: {}",
                value["exceptionDetails"]
            );
            texts.push(value["result"]["value"].as_str().unwrap().to_owned());
        }
        // The whole page, however long, not only the viewport.
        let metrics = cdp.call(s, "Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let clip =
            json!({ "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 });
        let shot = cdp
            .call(
                s,
                "Page.captureScreenshot",
                json!({ "format": "png", "clip": clip, "captureBeyondViewport": true }),
            )
            .await;
        (texts, shot["data"].as_str().unwrap().to_owned())
    };
    // Later than `deadline`, so that a page that never finishes is reported
    // with what it shows.
    let hang = deadline + Duration::from_secs(10);
    let Ok((texts, png)) = tokio::time::timeout_at(hang, session).await else {
        panic!(
            "{name}: chromium did not finish {url}; its stderr:\n{}",
            browser.stderr.lock().unwrap()
        );
    };
    drop(browser);
    let screenshot = out_dir().join(format!("{name}.png"));
    std::fs::write(&screenshot, BASE64.decode(png.as_bytes()).unwrap()).unwrap();
    note(&format!(
        "{name}: screenshot {} ({:.1?} in Chromium)",
        screenshot.display(),
        started.elapsed()
    ));
    let results = texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {text}: {e}")))
        .collect();
    PageRun {
        results,
        screenshot,
    }
}

/// What the echo server did on one connection.
#[derive(Debug, Default)]
struct ConnLog {
    /// Frames received, decoded with the server's layout.
    received: Vec<(u32, Vec<u8>)>,
    /// WebSocket messages sent: (is text, length).
    sent: Vec<(bool, usize)>,
}

/// A test-only WebSocket echo server. It reads as Go Zinx's WebSocket path does
/// (every binary or text message is more of one byte stream, decoded in the
/// server's layout) and echoes each frame, but, deliberately unlike Go Zinx
/// (one binary message per reply frame), sends its replies in pairs cut across
/// WebSocket messages by [`cut`], to exercise the module's reassembly.
async fn echo_server(layout: Layout) -> (SocketAddr, Arc<Mutex<Vec<ConnLog>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let all = logs.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = {
                let mut logs = all.lock().unwrap();
                logs.push(ConnLog::default());
                logs.len() - 1
            };
            let logs = all.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut codec = Codec::new(layout, 4096);
                let mut inbound = BytesMut::new();
                let mut held: Option<BytesMut> = None;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        WsMessage::Binary(b) => inbound.extend_from_slice(&b),
                        WsMessage::Text(t) => inbound.extend_from_slice(t.as_bytes()),
                        WsMessage::Close(_) => break,
                        _ => continue,
                    }
                    while let Some(m) = codec.decode(&mut inbound).expect("a valid frame") {
                        logs.lock().unwrap()[index]
                            .received
                            .push((m.id.0, m.data.to_vec()));
                        let mut reply = BytesMut::new();
                        codec.encode_into(m.id, &m.data, &mut reply).unwrap();
                        let Some(first) = held.take() else {
                            held = Some(reply);
                            continue;
                        };
                        for msg in cut(index, &first, &reply) {
                            logs.lock().unwrap()[index]
                                .sent
                                .push((msg.is_text(), msg.len()));
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, logs)
}

/// The WebSocket messages that carry two reply frames, `a` then `b`, on the
/// server's connection `index`. Even connections: three bytes of `a` (a header
/// cut short), then the rest of `a` and all of `b` in one message, which must
/// yield two frames, sent as text when it is valid UTF-8 (Zinx reads text as
/// its UTF-8 bytes). Odd connections: all of `a` and five bytes of `b`, whose
/// rest, carried over, the next message completes.
fn cut(index: usize, a: &[u8], b: &[u8]) -> Vec<WsMessage> {
    let stream = [a, b].concat();
    let at = if index % 2 == 0 { 3 } else { a.len() + 5 };
    let (head, tail) = stream.split_at(at);
    let tail = match std::str::from_utf8(tail) {
        Ok(text) if index % 2 == 0 => WsMessage::Text(text.into()),
        _ => WsMessage::Binary(tail.to_vec().into()),
    };
    vec![WsMessage::Binary(head.to_vec().into()), tail]
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Tlv => "tlv",
        Layout::Ltv => "ltv",
    }
}

/// The replies `echo.html` shows when every greeting came back.
fn expected_replies() -> Vec<Value> {
    GREETINGS
        .iter()
        .map(|&(id, text)| {
            json!({
                "id": id,
                "length": text.len(),
                "hex": HEXLOWER.encode(text.as_bytes()),
                "text": text,
            })
        })
        .collect()
}

/// Every load of `run` showed exactly the greetings echoed, in `layout`.
fn assert_echoed(run: &PageRun, layout: Layout, name: &str) {
    for (load, results) in run.results.iter().enumerate() {
        assert_eq!(results["state"], "done", "{name}, load {load}: {results:#}");
        assert_eq!(results["layout"], layout_name(layout));
        assert_eq!(
            results["replies"].as_array().unwrap(),
            &expected_replies(),
            "{name}, load {load}: the page's replies ({})",
            run.screenshot.display()
        );
    }
}

/// `echo.html` against the echo example's WebSocket listener in `layout`: the
/// page must show exactly the two greetings echoed.
#[cfg(feature = "ws")]
async fn echo_example_page(layout: Layout, name: &str) {
    let Some(exe) = chromium(name) else { return };
    let dir = out_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("zinx.json");
    std::fs::write(
        &config,
        r#"{"Host": "127.0.0.1", "Mode": "websocket", "WsPort": 0, "WsPath": "/"}"#,
    )
    .unwrap();
    let (_server, lines) =
        support::echo_example_with(&config, 1, &["--format", layout_name(layout)]).await;
    let addr: SocketAddr = lines[0]
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {lines:?}"));
    let query = format!("ws=ws://{addr}/&layout={}", layout_name(layout));
    let run = run_page(&exe, name, "echo.html", &query, 1).await;
    assert_echoed(&run, layout, name);
}

#[cfg(feature = "ws")]
#[tokio::test]
async fn echo_page_against_the_echo_example_tlv() {
    echo_example_page(Layout::Tlv, "example-tlv").await;
}

#[cfg(feature = "ws")]
#[tokio::test]
async fn echo_page_against_the_echo_example_ltv() {
    echo_example_page(Layout::Ltv, "example-ltv").await;
}

/// `echo.html` against the cutting echo server in `layout`, loaded twice (once
/// for each way [`cut`] cuts the replies): the page must show exactly the two
/// greetings echoed, and the server must have received exactly them.
async fn echo_page(layout: Layout, name: &str) {
    let Some(exe) = chromium(name) else { return };
    let (addr, logs) = echo_server(layout).await;
    let query = format!("ws=ws://{addr}/&layout={}", layout_name(layout));
    let run = run_page(&exe, name, "echo.html", &query, 2).await;
    assert_echoed(&run, layout, name);

    // The server's side: the module's frames decoded as sent, and the replies
    // cut as intended, so that the page's reassembly was exercised.
    let logs = logs.lock().unwrap();
    assert_eq!(logs.len(), 2, "{name}: a connection per load: {logs:?}");
    let sent_greetings: Vec<(u32, &[u8])> = GREETINGS
        .iter()
        .map(|&(id, text)| (id, text.as_bytes()))
        .collect();
    let (a, b) = (8 + GREETINGS[0].1.len(), 8 + GREETINGS[1].1.len());
    let cuts = [
        [(false, 3), (true, a + b - 3)],
        [(false, a + 5), (false, b - 5)],
    ];
    for (log, cuts) in logs.iter().zip(cuts) {
        let received: Vec<(u32, &[u8])> = log
            .received
            .iter()
            .map(|(id, data)| (*id, &data[..]))
            .collect();
        assert_eq!(received, sent_greetings, "{name}: what the server received");
        assert_eq!(
            log.sent, cuts,
            "{name}: the replies' messages (is text, length)"
        );
    }
}

#[tokio::test]
async fn echo_page_tlv() {
    echo_page(Layout::Tlv, "echo-tlv").await;
}

#[tokio::test]
async fn echo_page_ltv() {
    echo_page(Layout::Ltv, "echo-ltv").await;
}

/// `test.html`: the module's pure functions checked in the browser, every check
/// passing, and enough of them that a page which ran none cannot pass.
#[tokio::test]
async fn module_unit_tests_page() {
    let name = "unit";
    let Some(exe) = chromium(name) else { return };
    let run = run_page(&exe, name, "test.html", "", 1).await;
    let results = &run.results[0];
    assert_eq!(results["state"], "done", "{name}: {results:#}");
    assert_eq!(results["failed"], 0, "{name}: {results:#}");
    // As many as the page has today: fewer means checks were lost.
    let passed = results["passed"].as_u64().unwrap();
    assert!(
        passed >= 23,
        "{name}: only {passed} checks ran: {results:#}"
    );
}
