//! The `echo_server` example binary end to end: it reads zinx.json from
//! `ZINX_CONFIG_FILE_PATH`, echoes in both layouts, rejects a malformed file with a
//! clear message and names the keys of an address it cannot listen on, filters its
//! logs by level and `RUST_LOG`, backs off when out of file descriptors, closes
//! half-sent and silent peers as its config says, and exits 0 on SIGTERM and
//! SIGINT.
#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use support::{RawClient, within};
use zinx::Layout;

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; `cargo test` builds the
    // examples into target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test` (which builds examples)",
        path.display()
    );
    path
}

fn write_config(name: &str, json: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zinx-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

fn start(config: &PathBuf, args: &[&str]) -> Running {
    let mut cmd = Command::new(example("echo_server"));
    cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit());
    start_with(cmd, config, args)
}

fn start_with(mut cmd: Command, config: &PathBuf, args: &[&str]) -> Running {
    let mut child = cmd
        .args(args)
        .env("ZINX_CONFIG_FILE_PATH", config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Running { child, addr }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    within(
        "echo_server to exit",
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .unwrap()
}

const CONFIG: &str = r#"{"Name": "example test", "Host": "127.0.0.1", "TcpPort": 0, "MaxConn": 8}"#;

#[tokio::test]
async fn echo_server_tlv_sync_and_async_routes_then_sigterm_exits_zero() {
    let config = write_config("tlv.json", CONFIG);
    let server = start(&config, &[]);
    let mut client = RawClient::connect(server.addr, Layout::Tlv).await;
    let m = client.roundtrip(1, "via the sync route").await;
    assert_eq!((m.id.0, &m.data[..]), (1, &b"via the sync route"[..]));
    let m = client.roundtrip(2, "via the async route").await;
    assert_eq!((m.id.0, &m.data[..]), (2, &b"via the async route"[..]));
    signal(&server.child, "-TERM");
    // The open connection is closed by the shutdown, and the process exits 0.
    assert!(client.recv_until_closed().await.is_empty());
    let status = wait_exit(server.child).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn echo_server_ltv_format_then_sigint_exits_zero() {
    let config = write_config("ltv.json", CONFIG);
    let server = start(&config, &["--format", "ltv"]);
    let mut client = RawClient::connect(server.addr, Layout::Ltv).await;
    let m = client.roundtrip(1, "little").await;
    assert_eq!((m.id.0, &m.data[..]), (1, &b"little"[..]));
    signal(&server.child, "-INT");
    let status = wait_exit(server.child).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn echo_server_rejects_a_malformed_config_naming_file_and_position() {
    let config = write_config(
        "broken.json",
        "{\n  \"TCPPort\": 0,\n  \"MaxConn\": oops\n}",
    );
    let out = Command::new(example("echo_server"))
        .env("ZINX_CONFIG_FILE_PATH", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.json"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the server with `LogIsolationLevel` and an optional `RUST_LOG`, stops it,
/// and returns what it logged.
async fn logs_with(level: u8, rust_log: Option<&str>) -> String {
    let json = format!(r#"{{"Host": "127.0.0.1", "TCPPort": 0, "LogIsolationLevel": {level}}}"#);
    let config = write_config(&format!("log{level}{}.json", rust_log.is_some()), &json);
    let mut cmd = Command::new(example("echo_server"));
    cmd.env_remove("RUST_LOG").stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let server = start_with(cmd, &config, &[]);
    signal(&server.child, "-TERM");
    let out = within(
        "echo_server to exit",
        tokio::task::spawn_blocking(move || server.child.wait_with_output().unwrap()),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn log_isolation_level_filters_and_rust_log_wins() {
    let info = logs_with(1, None).await;
    assert!(
        info.contains("server started"),
        "level 1 keeps info: {info}"
    );
    let warn_only = logs_with(2, None).await;
    assert!(
        !warn_only.contains("server started"),
        "level 2 drops info: {warn_only}"
    );
    let overridden = logs_with(3, Some("info")).await;
    assert!(
        overridden.contains("server started"),
        "RUST_LOG wins: {overridden}"
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 14th
    // field of the line, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors (EMFILE), the accept loop backs off instead of spinning
/// or exiting, keeps serving the connections it has, and accepts again once
/// descriptors are free.
#[tokio::test]
async fn accept_backs_off_when_out_of_descriptors_and_recovers() {
    let config = write_config(
        "emfile.json",
        CONFIG.replace("\"MaxConn\": 8", "\"MaxConn\": 0").as_str(),
    );
    // A descriptor limit of 32 leaves the server room for about 20 connections.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 32 && exec \"$0\"")
        .arg(example("echo_server"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped());
    let mut server = start_with(cmd, &config, &[]);
    let mut log = server.child.stderr.take().unwrap();
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(RawClient::connect(server.addr, Layout::Tlv).await);
    }
    // The first connections are served; the last ones wait in the backlog.
    let m = held[0].roundtrip(1, "still serving").await;
    assert_eq!(&m.data[..], b"still serving");
    let late = held.pop().unwrap();
    // While out of descriptors the server waits between accepts: over a second it
    // uses a small part of a CPU (a spinning accept loop would use all of it).
    let pid = server.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 50,
        "{used} CPU ticks in one second while out of descriptors"
    );
    // Free descriptors: the connection that waited is accepted and served.
    held.truncate(5);
    let mut late = late;
    let m = late.roundtrip(1, "accepted at last").await;
    assert_eq!(&m.data[..], b"accepted at last");
    signal(&server.child, "-TERM");
    drop((held, late));
    assert!(wait_exit(server.child).await.success());
    // The limit was really hit: accept failed with EMFILE and backed off.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut log, &mut text).unwrap();
    assert!(
        text.contains("accept failed, backing off") && text.contains("os error 24"),
        "{text}"
    );
}

/// zinx.json's `FrameTimeout` and `IdleTimeout` reach the example's server: a
/// peer that sends half a header, and one that sends nothing, are closed.
#[tokio::test]
async fn echo_server_closes_half_sent_and_silent_peers_as_its_config_says() {
    for (name, key, bytes) in [
        ("frame-timeout.json", "FrameTimeout", &[0u8, 0, 0][..]),
        ("idle-timeout.json", "IdleTimeout", &[][..]),
    ] {
        let json =
            format!(r#"{{"Host": "127.0.0.1", "TcpPort": 0, "FrameTimeout": 0, "{key}": 1}}"#);
        let server = start(&write_config(name, &json), &[]);
        let mut peer = RawClient::connect(server.addr, Layout::Tlv).await;
        peer.write_raw(bytes).await;
        let started = std::time::Instant::now();
        assert!(peer.read_eof().await, "{key}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(500));
        signal(&server.child, "-TERM");
        assert!(wait_exit(server.child).await.success());
    }
}

/// A Host that is not this machine's is an error naming the address and its
/// keys (binding sends nothing on the network).
#[tokio::test]
async fn echo_server_names_the_keys_of_an_address_it_cannot_listen_on() {
    let config = write_config(
        "foreign-host.json",
        r#"{"Host": "192.0.2.1", "TcpPort": 0}"#,
    );
    let out = Command::new(example("echo_server"))
        .env("ZINX_CONFIG_FILE_PATH", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("192.0.2.1:0") && stderr.contains("Host, TCPPort"),
        "{stderr}"
    );
}

/// The chat example: names, a room, a line relayed to the others in the room
/// (not to the speaker, not to another room), and a notice when one leaves.
#[tokio::test]
async fn chat_example_relays_to_the_room_and_tells_who_left() {
    let mut child = Command::new(example("chat"))
        .arg("0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut people = Vec::new();
    for (who, room) in [("alice", "lobby"), ("bob", "lobby"), ("carol", "other")] {
        let mut c = RawClient::connect(addr, Layout::Tlv).await;
        assert_eq!(c.roundtrip(1, who).await.id.0, 1);
        assert_eq!(c.roundtrip(2, room).await.id.0, 2);
        people.push(c);
    }
    // Alice was in the lobby when Bob joined: she is told.
    let notice = people[0].recv().await;
    assert_eq!(
        (notice.id.0, &notice.data[..]),
        (11, &b"bob joined lobby"[..])
    );
    let said = people[0].roundtrip(3, "hello").await;
    assert_eq!(said.id.0, 3);
    let heard = people[1].recv().await;
    assert_eq!((heard.id.0, &heard.data[..]), (10, &b"alice: hello"[..]));
    // Bob leaves: Alice is told; Carol, elsewhere, hears nothing of it.
    let bob = people.remove(1);
    drop(bob);
    let left = people[0].recv().await;
    assert_eq!((left.id.0, &left.data[..]), (11, &b"bob left"[..]));
    let carol = &mut people[1];
    assert_eq!(
        carol.roundtrip(3, "anyone?").await.id.0,
        3,
        "no lobby line before"
    );
    signal(&child, "-INT");
    drop(people);
    assert!(wait_exit(child).await.success());
}
