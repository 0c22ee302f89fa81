//! The `zinx-cli` binary against zinx servers started here on 127.0.0.1 port 0:
//! an echo server in each layout, servers that send two replies, greet on
//! connect, never reply or close on a message; one-shot and interactive mode,
//! the layout hint, and every failure exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use zinx::{Config, Layout, Request, Router, Server, ServerBuilder};

/// Longest any run here may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Starts `builder`'s server on 127.0.0.1 port 0; it runs until the test's
/// runtime ends.
async fn start(builder: ServerBuilder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(builder.build().run(listener, std::future::pending()));
    addr
}

fn server(layout: Layout, router: Router) -> ServerBuilder {
    Server::builder(Config::default())
        .layout(layout)
        .router(router)
}

/// Echoes every message, whatever its ID.
fn echo() -> Router {
    Router::new()
        .fallback(|req: Request| async move { req.conn().send(req.msg_id(), req.data()).await })
}

async fn echo_server(layout: Layout) -> SocketAddr {
    start(server(layout, echo())).await
}

/// Answers message 5 with two messages, 6 (text) and 7 (bytes); answers
/// message 8 after half a second, as a slow server does; answers message 9
/// and closes the connection; echoes the rest.
async fn chatty_server() -> SocketAddr {
    let router = echo()
        .route(5, |req: Request| async move {
            req.conn().send(6, "first").await?;
            req.conn().send(7, vec![0xde, 0xad, 0xbe, 0xef]).await
        })
        .route(8, |req: Request| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            req.conn().send(8, "late").await
        })
        .route(9, |req: Request| async move {
            req.conn().send(9, "bye").await?;
            req.conn().close();
            Ok::<(), zinx::Error>(())
        });
    start(server(Layout::Tlv, router)).await
}

/// Sends message `id` with `data` as soon as a client connects, then routes
/// with `router`.
async fn greeting_server(
    layout: Layout,
    router: Router,
    id: u32,
    data: &'static str,
) -> SocketAddr {
    let builder = server(layout, router).on_connect(move |conn| async move {
        let _ = conn.send(id, data).await;
    });
    start(builder).await
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zinx-cli"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zinx-cli")
}

/// Runs zinx-cli with `args` and `stdin` as its whole input, killed if it
/// outlasts `LIMIT`.
async fn cli_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(args);
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("zinx-cli did not finish in time")
        .expect("wait for zinx-cli")
}

async fn cli(args: &[&str]) -> Output {
    cli_with_input(args, b"").await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit status and the whole of stdout.
#[track_caller]
fn assert_run(out: &Output, code: i32, expected_stdout: &str) {
    assert_eq!(
        (out.status.code(), stdout(out).as_str()),
        (Some(code), expected_stdout),
        "stderr: {}",
        stderr(out)
    );
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("zinx-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn text_goes_out_and_the_echo_is_printed() {
    let addr = echo_server(Layout::Tlv).await.to_string();
    let out = cli(&[
        "--addr",
        &addr,
        "--transport",
        "tcp",
        "send",
        "1",
        "--text",
        "hello",
        "--expect",
        "1",
    ])
    .await;
    assert_run(
        &out,
        0,
        "-> id=1 len=5 text \"hello\"\n<- id=1 len=5 text \"hello\"\n",
    );
    assert_eq!(stderr(&out), "");
}

#[tokio::test]
async fn hex_goes_out_as_bytes_and_bytes_print_as_hex() {
    let addr = echo_server(Layout::Tlv).await.to_string();
    let out = cli(&[
        "--addr",
        &addr,
        "send",
        "0x02",
        "--hex",
        "0a 0B0c0d",
        "--expect",
        "1",
    ])
    .await;
    assert_run(
        &out,
        0,
        "-> id=2 len=4 hex 0a0b0c0d\n<- id=2 len=4 hex 0a0b0c0d\n",
    );
}

#[tokio::test]
async fn a_file_goes_out_whole_and_long_data_is_cut_unless_full() {
    let addr = echo_server(Layout::Tlv).await.to_string();
    let content: Vec<u8> = (0..100u8).collect();
    let file = TempFile::new("data.bin", &content);
    let cut = format!(
        "id=3 len=100 hex {} ... (64 of 100 bytes shown; --full shows all)\n",
        hex(&content[..64])
    );
    let out = cli(&[
        "--addr",
        &addr,
        "send",
        "3",
        "--file",
        file.path(),
        "--expect",
        "1",
    ])
    .await;
    assert_run(&out, 0, &format!("-> {cut}<- {cut}"));

    // --full (or --raw) shows every byte: the echo is the file.
    let whole = format!("id=3 len=100 hex {}\n", hex(&content));
    for flag in ["--full", "--raw"] {
        let out = cli(&[
            "--addr",
            &addr,
            flag,
            "send",
            "3",
            "--file",
            file.path(),
            "--expect",
            "1",
        ])
        .await;
        assert_run(&out, 0, &format!("-> {whole}<- {whole}"));
    }
}

#[tokio::test]
async fn every_reply_within_the_wait_is_printed() {
    let addr = chatty_server().await.to_string();
    let expected =
        "-> id=5 len=2 text \"hi\"\n<- id=6 len=5 text \"first\"\n<- id=7 len=4 hex deadbeef\n";
    // Without --expect: whatever comes within --wait (long enough for a
    // loaded machine; the run takes all of it).
    let out = cli(&["--addr", &addr, "--wait", "3", "send", "5", "--text", "hi"]).await;
    assert_run(&out, 0, expected);

    // With --expect: done as soon as both are in, long before --wait.
    let started = Instant::now();
    let out = cli(&[
        "--addr", &addr, "--wait", "25", "send", "5", "--text", "hi", "--expect", "2",
    ])
    .await;
    assert_run(&out, 0, expected);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "--expect 2 waited {:?} after both replies",
        started.elapsed()
    );
}

#[tokio::test]
async fn ltv_works_with_format_ltv_and_without_a_hint() {
    let addr = echo_server(Layout::Ltv).await.to_string();
    let out = cli(&[
        "--addr", &addr, "--format", "ltv", "send", "1", "--text", "hello", "--expect", "1",
    ])
    .await;
    assert_run(
        &out,
        0,
        "-> id=1 len=5 text \"hello\"\n<- id=1 len=5 text \"hello\"\n",
    );
    assert_eq!(stderr(&out), "");
}

#[tokio::test]
async fn a_reply_in_the_other_layout_gets_a_hint() {
    // The LTV frame `len=7 id=1` read as TLV announces 16 MiB: the client's
    // codec refuses it, the tool says why and what to try.
    let addr = greeting_server(Layout::Ltv, echo(), 1, "welcome")
        .await
        .to_string();
    let out = cli(&["--addr", &addr, "send", "1", "--text", "hi", "--wait", "10"]).await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot decode what the server sent (header 0700000001000000)"),
        "{err}"
    );
    assert!(
        err.contains(
            "hint: the server may use the LTV layout: try --format ltv (read as LTV, that header is id=1 len=7)"
        ),
        "{err}"
    );

    // And the other way round.
    let addr = greeting_server(Layout::Tlv, echo(), 1, "welcome")
        .await
        .to_string();
    let out = cli(&[
        "--addr", &addr, "--format", "ltv", "send", "1", "--text", "hi", "--wait", "10",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "hint: the server may use the TLV layout: try --format tlv (read as TLV, that header is id=1 len=7)"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_byte_reversed_id_gets_a_hint() {
    // The LTV frame `len=5 id=0` reads as a valid TLV header, `id=0x05000000
    // len=0` (its data then waits as the start of a header). ID 0 with no data
    // reads the same in both layouts, so the server takes the request (and,
    // without routes, drops it) and keeps the connection.
    let addr = greeting_server(Layout::Ltv, Router::new(), 0, "hello")
        .await
        .to_string();
    let out = cli(&["--addr", &addr, "--wait", "3", "send", "0"]).await;
    assert_run(&out, 0, "-> id=0 len=0\n<- id=83886080 len=0\n");
    assert!(
        stderr(&out).contains(
            "hint: the server may use the LTV layout: try --format ltv (read as LTV, that header is id=0 len=5)"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_server_that_refuses_our_layout_silently_gets_a_hint() {
    // An LTV server reads our TLV header `id=1` as announcing 16 MiB and
    // closes the connection without a word.
    let addr = echo_server(Layout::Ltv).await.to_string();
    let out = cli(&[
        "--addr", &addr, "send", "1", "--text", "hello", "--wait", "10",
    ])
    .await;
    assert_run(&out, 0, "-> id=1 len=5 text \"hello\"\n");
    assert_eq!(
        stderr(&out),
        "the server closed the connection without replying\n\
         hint: the server may use the LTV layout: try --format ltv (if so, it read the header we sent as announcing 16777216 data bytes and refused it)\n"
    );
    // Asked for a reply, it is a failure.
    let out = cli(&[
        "--addr", &addr, "send", "1", "--text", "hello", "--expect", "1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("expected 1 reply, got 0"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn interactive_mode_sends_each_line_and_skips_bad_ones() {
    let addr = echo_server(Layout::Tlv).await.to_string();
    let file = TempFile::new("line.txt", b"from a file");
    let input = format!(
        "1 hello world\n2 hex:0a0b\n3 file:{}\nnot-an-id hello\n4 hex:zz\n\n# a comment\n:help\n5 text:hex:00\n6\n",
        file.path()
    );
    // Without a subcommand it is interactive too. At the end of the input it
    // waits --wait for the last replies.
    for mode in [&["repl"][..], &[][..]] {
        let mut args = vec!["--addr", addr.as_str(), "--wait", "3"];
        args.extend_from_slice(mode);
        let out = cli_with_input(&args, input.as_bytes()).await;
        // Replies arrive while later lines are sent: compare each direction.
        let lines = stdout(&out);
        let (sent, received): (Vec<&str>, Vec<&str>) =
            lines.lines().partition(|l| l.starts_with("->"));
        let expected = [
            "id=1 len=11 text \"hello world\"",
            "id=2 len=2 hex 0a0b",
            "id=3 len=11 text \"from a file\"",
            "id=5 len=6 text \"hex:00\"",
            "id=6 len=0",
        ];
        let strip = |v: Vec<&str>| -> Vec<String> { v.iter().map(|l| l[3..].to_owned()).collect() };
        assert_eq!(
            strip(sent),
            expected,
            "stdout: {lines}\nstderr: {}",
            stderr(&out)
        );
        assert_eq!(
            strip(received),
            expected,
            "stdout: {lines}\nstderr: {}",
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("line 4: \"not-an-id\" is not a message ID"),
            "{err}"
        );
        assert!(err.contains("line 5: bad hex \"zz\""), "{err}");
        assert!(err.contains(":quit"), "the help: {err}");
    }
}

#[tokio::test]
async fn interactive_mode_waits_for_replies_after_the_input_ends() {
    let addr = chatty_server().await.to_string();
    let out = cli_with_input(&["--addr", &addr, "--wait", "5", "repl"], b"8 slow\n").await;
    assert_run(
        &out,
        0,
        "-> id=8 len=4 text \"slow\"\n<- id=8 len=4 text \"late\"\n",
    );
}

/// Reads stdout lines until one equals `want`, failing after `LIMIT`.
async fn read_until_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    want: &str,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line {want:?} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("stdout ended before {want:?}"));
        if line == want {
            return;
        }
    }
}

#[tokio::test]
async fn interactive_mode_prints_replies_while_waiting_for_input() {
    let addr = greeting_server(Layout::Tlv, echo(), 42, "welcome")
        .await
        .to_string();
    let mut child = spawn(&["--addr", &addr, "repl"]);
    let mut input = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Nothing typed yet: the server's greeting still shows.
    read_until_line(&mut lines, "<- id=42 len=7 text \"welcome\"").await;
    input.write_all(b"1 ping\n").await.unwrap();
    read_until_line(&mut lines, "<- id=1 len=4 text \"ping\"").await;
    // :quit ends it with the input still open.
    input.write_all(b":quit\n").await.unwrap();
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect(":quit did not end zinx-cli")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn interactive_mode_fails_when_the_server_hangs_up() {
    let addr = chatty_server().await.to_string();
    let mut child = spawn(&["--addr", &addr, "repl"]);
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"9 bye\n").await.unwrap();
    // The input stays open (held here): the close alone ends the session.
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("zinx-cli did not notice the close")
        .unwrap();
    assert_run(
        &out,
        1,
        "-> id=9 len=3 text \"bye\"\n<- id=9 len=3 text \"bye\"\n",
    );
    assert_eq!(stderr(&out), "the server closed the connection\n");
    drop(input);
}

#[tokio::test]
async fn invalid_input_exits_2_before_connecting() {
    // Nothing listens: had it connected first, it would fail with status 1.
    let addr = format!("127.0.0.1:{}", dead_port());
    let cases: &[(&[&str], &str)] = &[
        (
            &["send", "1", "--hex", "0a0"],
            "bad hex \"0a0\": odd number of digits",
        ),
        (
            &["send", "1", "--hex", "zz"],
            "'z' at position 0 is not a hex digit",
        ),
        (
            &["send", "1", "--file", "/nonexistent/zinx-cli/data"],
            "cannot read file /nonexistent/zinx-cli/data",
        ),
        (
            &["send", "4294967296"],
            "\"4294967296\" is not a message ID",
        ),
        (&["send", "one"], "\"one\" is not a message ID"),
        (
            &["--max-len", "3", "send", "1", "--text", "four"],
            "the data is 4 bytes, more than --max-len 3",
        ),
        (
            &["--transport", "ws", "send", "1"],
            "unknown transport \"ws\": this build has tcp",
        ),
        (&["--format", "xml", "send", "1"], "xml"),
        (
            &["send", "1", "--text", "a", "--hex", "00"],
            "cannot be used with",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        let out = cli(&all).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
    }
}

#[tokio::test]
async fn no_server_exits_1() {
    let addr = format!("127.0.0.1:{}", dead_port());
    for mode in [&["send", "1"][..], &["repl"][..]] {
        let mut args = vec!["--addr", addr.as_str()];
        args.extend_from_slice(mode);
        let out = cli(&args).await;
        assert_eq!(out.status.code(), Some(1), "{mode:?}");
        assert!(
            stderr(&out).starts_with(&format!("zinx-cli: cannot connect to {addr} (tcp): ")),
            "{mode:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn expected_replies_that_do_not_come_exit_1() {
    // No routes: the server logs and drops every message.
    let addr = start(server(Layout::Tlv, Router::new())).await.to_string();
    let out = cli(&[
        "--addr", &addr, "--wait", "0.3", "send", "1", "--text", "hi", "--expect", "1",
    ])
    .await;
    assert_run(&out, 1, "-> id=1 len=2 text \"hi\"\n");
    assert_eq!(
        stderr(&out),
        "zinx-cli: expected 1 reply, got 0 within 0.3s\n"
    );
    // Without --expect, silence is an answer.
    let out = cli(&[
        "--addr", &addr, "--wait", "0.3", "send", "1", "--text", "hi",
    ])
    .await;
    assert_run(&out, 0, "-> id=1 len=2 text \"hi\"\n");
}
