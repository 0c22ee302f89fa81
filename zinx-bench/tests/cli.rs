//! The `zinx-bench` binary against servers written here, on 127.0.0.1 port 0:
//! nothing listening, a host name, replies with a wrong byte, connections the
//! server closes or resets, and the terminal-only progress bar; and over TLS,
//! WebSocket and both against `zinx-baseline` of the same transport.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use zinx_bench::{ErrorsByReason, Mismatch, Reason, RunReport};

/// Longest any run here may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Runs zinx-bench with `args`, stdout and stderr captured (so stderr is not a
/// terminal), killed if it outlasts `LIMIT`.
async fn bench(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_zinx-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zinx-bench");
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("zinx-bench did not finish in time")
        .expect("wait for zinx-bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one JSON line of a `--json` run.
fn json_report(out: &Output) -> RunReport {
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one result line: {stdout:?}");
    serde_json::from_str(stdout.trim_end()).expect("a RunReport line")
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// Echoes every byte back on up to `conns` connections: a correct Zinx echo
/// server, whatever the framing.
async fn echo_server(conns: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        for _ in 0..conns {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Reads one TLV request frame (header and data).
async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut frame = vec![0u8; 8];
    stream.read_exact(&mut frame).await.expect("request header");
    let len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    frame.resize(8 + len, 0);
    stream
        .read_exact(&mut frame[8..])
        .await
        .expect("request data");
    frame
}

/// Accepts one connection, reads its first request, passes it through `alter`
/// and sends the result back; then waits for the client to close. Returns the
/// port and the request as received.
async fn one_reply_server(
    alter: fn(&mut Vec<u8>),
) -> (u16, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut stream).await;
        let mut reply = request.clone();
        alter(&mut reply);
        stream.write_all(&reply).await.expect("reply");
        let _ = tx.send(request);
        // The client closes once it has seen the reply.
        let _ = stream.read(&mut [0u8; 64]).await;
    });
    (port, rx)
}

#[tokio::test]
async fn nothing_listening_stops_at_once_with_the_address_and_the_os_error() {
    let port = dead_port();
    let addr = format!("127.0.0.1:{port}");
    for extra in [&[][..], &["--json"], &["--connect-only"]] {
        let started = Instant::now();
        // A 60 s run: stopping at once is the only way to finish in LIMIT.
        let mut args = vec!["--addr", &addr, "--conns", "20", "--warmup", "0"];
        args.extend(["--duration", "60"]);
        args.extend(extra);
        let out = bench(&args).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{extra:?}");
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "cannot connect to {addr}: Connection refused (os error"
            )) || stderr.contains(&format!("cannot connect to {addr}: connection refused")),
            "{extra:?}: {stderr}"
        );
        assert_eq!(text(&out.stdout), "", "no result line, {extra:?}");
    }
}

#[tokio::test]
async fn a_host_name_is_resolved() {
    let port = echo_server(4).await;
    let addr = format!("localhost:{port}");
    let out = bench(&[
        "--addr",
        &addr,
        "--conns",
        "2",
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json_report(&out);
    assert!(report.replies > 0, "{report:?}");
    assert_eq!((report.errors, report.mismatches), (0, 0));
    assert_eq!(report.errors_by_reason, ErrorsByReason::default());
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_named() {
    // Not a valid host name: glibc turns it down without asking a DNS server.
    let addr = format!("no such host:{}", dead_port());
    let out = bench(&["--addr", &addr, "--duration", "0.1", "--warmup", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot resolve --addr {addr}: ")),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
    // Without a port, the error says what is expected.
    let out = bench(&["--addr", "localhost"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("expected host:port"));
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test]
async fn a_wrong_data_byte_is_reported_with_its_offset_and_both_bytes() {
    for json in [true, false] {
        // Byte 20 of the data, 28 of the frame.
        let (port, request) = one_reply_server(|reply| reply[28] ^= 0x5a).await;
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--addr", &addr, "--conns", "1", "--payload", "64"];
        args.extend(["--warmup", "0", "--duration", "0.3"]);
        if json {
            args.push("--json");
        }
        let out = bench(&args).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let sent = request.await.expect("the request")[28];
        let first = Mismatch {
            offset: 28,
            expected: Some(sent),
            got: Some(sent ^ 0x5a),
        };
        if json {
            let report = json_report(&out);
            assert_eq!((report.errors, report.mismatches), (1, 1));
            let mut reasons = ErrorsByReason::default();
            reasons.add(Reason::ReplyMismatch, 1);
            assert_eq!(report.errors_by_reason, reasons);
            assert_eq!(report.first_mismatch, Some(first));
        } else {
            let stdout = text(&out.stdout);
            let want = format!(
                "\nerrors by reason: 1 reply mismatch (first at byte 28 of the reply frame: \
                 expected {:#04x}, got {:#04x})\n",
                sent,
                sent ^ 0x5a
            );
            assert!(stdout.contains("; 1 mismatches, 1 errors"), "{stdout}");
            assert!(stdout.ends_with(&want), "{stdout}");
        }
    }
}

#[tokio::test]
async fn a_wrong_header_fails_at_once_without_waiting_for_the_data_it_announces() {
    // Length 64 (00 00 00 40) becomes 1000 (00 00 03 e8), the data unsent.
    let (port, _request) = one_reply_server(|reply| {
        reply.truncate(8);
        reply[4..8].copy_from_slice(&1000u32.to_be_bytes());
    })
    .await;
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let out = bench(&[
        "--addr",
        &addr,
        "--conns",
        "1",
        "--payload",
        "64",
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--json",
    ])
    .await;
    // Waiting for the data would end in the 10 s reply timeout instead.
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(&out);
    assert_eq!(report.errors_by_reason.reply_mismatch, 1, "{report:?}");
    assert_eq!(report.errors_by_reason.timeout, 0);
    assert_eq!(
        report.first_mismatch,
        Some(Mismatch {
            offset: 6,
            expected: Some(0x00),
            got: Some(0x03),
        })
    );
}

/// Reads one request on each of two connections, then closes the first
/// (FIN: end of stream for the client) and resets the second (RST).
async fn close_and_reset_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        let (mut closed, _) = listener.accept().await.expect("accept");
        let (mut reset, _) = listener.accept().await.expect("accept");
        read_request(&mut closed).await;
        read_request(&mut reset).await;
        closed.shutdown().await.expect("shutdown");
        reset.set_zero_linger().expect("SO_LINGER 0");
        drop(reset);
        // Keep the closed one open for reading until the client goes.
        let _ = closed.read(&mut [0u8; 64]).await;
    });
    port
}

#[tokio::test]
async fn closed_and_reset_connections_are_told_apart() {
    for connect_only in [false, true] {
        let port = close_and_reset_server().await;
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--addr", &addr, "--conns", "2", "--warmup", "0"];
        args.extend(["--duration", "0.2", "--json"]);
        if connect_only {
            args.push("--connect-only");
        }
        let out = bench(&args).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let report = json_report(&out);
        let mut reasons = ErrorsByReason::default();
        reasons.add(Reason::ClosedByServer, 1);
        reasons.add(Reason::ResetByPeer, 1);
        assert_eq!(
            report.errors_by_reason, reasons,
            "connect-only {connect_only}"
        );
        assert_eq!((report.errors, report.mismatches), (2, 0));
        assert_eq!(report.first_mismatch, None);
    }
}

#[tokio::test]
async fn a_clean_run_piped_prints_its_one_line_and_no_progress() {
    let port = echo_server(4).await;
    let addr = format!("127.0.0.1:{port}");
    let out = bench(&[
        "--addr",
        &addr,
        "--conns",
        "2",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
    ])
    .await;
    assert!(out.status.success());
    assert_eq!(
        text(&out.stderr),
        "",
        "no progress bar when stderr is a pipe"
    );
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("2 conns x pipeline 1 x 64 B: ")
            && stdout.ends_with("; 0 mismatches, 0 errors\n"),
        "{stdout}"
    );
}

/// A throw-away certificate for 127.0.0.1 from `zinx-bench cert`, in a
/// directory of its own under `name`: (cert.pem, key.pem).
async fn certificate(name: &str) -> (String, String) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = bench(&["cert", "--out", dir.to_str().expect("UTF-8 path")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = |file: &str| dir.join(file).to_str().expect("UTF-8 path").to_owned();
    (path("cert.pem"), path("key.pem"))
}

/// `zinx-baseline --transport transport` on 127.0.0.1 port 0 (killed when
/// dropped) and the address it listens on.
async fn baseline(transport: &str, cert: &str, key: &str) -> (tokio::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zinx-baseline"))
        .args(["--addr", "127.0.0.1:0", "--transport", transport])
        .args(["--cert", cert, "--key", key])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zinx-baseline");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(LIMIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("zinx-baseline did not start in time")
        .expect("read its stdout")
        .expect("a line");
    // "zinx-baseline listening on 127.0.0.1:PORT (Tls)"
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("an address")
        .to_owned();
    (child, addr)
}

#[tokio::test]
async fn tls_ws_and_wss_runs_count_replies_without_errors() {
    let (cert, key) = certificate("transports").await;
    for transport in ["tls", "ws", "wss"] {
        let (_server, addr) = baseline(transport, &cert, &key).await;
        // Pipelined: several requests in a read, several replies in a message.
        let mut args = vec!["--addr", &addr, "--transport", transport, "--json"];
        args.extend(["--conns", "4", "--pipeline", "8", "--payload", "300"]);
        args.extend(["--warmup", "0.05", "--duration", "0.25"]);
        if transport != "ws" {
            args.extend(["--ca", &cert]);
        }
        let out = bench(&args).await;
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        let report = json_report(&out);
        assert!(report.replies > 0, "{transport}: {report:?}");
        assert_eq!((report.errors, report.mismatches), (0, 0), "{transport}");
    }
}

#[tokio::test]
async fn a_tls_server_that_is_not_trusted_stops_the_run_at_once() {
    let (cert, key) = certificate("untrusted-server").await;
    let (other, _) = certificate("untrusted-other").await;
    let (_server, addr) = baseline("tls", &cert, &key).await;
    let run = |extra: Vec<&str>| {
        let mut args = vec!["--addr", &addr, "--transport", "tls", "--conns", "2"];
        args.extend(["--warmup", "0", "--duration", "60"]);
        args.extend(extra);
        args.iter().map(|&a| a.to_owned()).collect::<Vec<_>>()
    };
    for (extra, error) in [
        (vec![], "--transport tls needs --ca FILE or --insecure"),
        (vec!["--ca", other.as_str()], "invalid peer certificate"),
    ] {
        let args = run(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = bench(&args).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(error), "{stderr}");
        assert_eq!(text(&out.stdout), "");
    }
}
