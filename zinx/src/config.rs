//! Configuration: Zinx's zinx.json as a plain value.
//!
//! [`Config`] is read once by the binary ([`Config::load`]) and handed to
//! [`ServerBuilder`](crate::ServerBuilder); nothing in the crate reads a global.
//! Keys and defaults are those of Go Zinx, and keys match case-insensitively as Go's
//! JSON decoder does (`TcpPort` sets `TCPPort`); unknown keys are ignored so one file
//! can serve a Go and a Rust server. A malformed file is an [`Error::ConfigParse`]
//! naming the file, line and column.
//!
//! # Examples
//!
//! ```
//! let cfg = zinx::Config::from_json_str(r#"{"Name": "demo", "tcpport": 7777}"#).unwrap();
//! assert_eq!(cfg.name, "demo");
//! assert_eq!(cfg.tcp_port, 7777);
//! assert_eq!(cfg.max_conn, 12000); // Zinx's default
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;

use crate::error::Error;

/// Environment variable naming the config file, as in Go Zinx.
pub const CONFIG_PATH_ENV: &str = "ZINX_CONFIG_FILE_PATH";

/// The config file read when [`CONFIG_PATH_ENV`] is not set.
pub const DEFAULT_CONFIG_PATH: &str = "conf/zinx.json";

/// How handlers are scheduled onto workers (Zinx's `WorkerMode`).
///
/// In every mode the messages of one connection are handled one at a time, in
/// arrival order; different connections run in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum WorkerMode {
    /// `"Task"` (or `""`, the default): every connection's handlers run on its
    /// own task, so a handler that awaits (I/O, a timer, a lock) stalls only its
    /// own connection, as an async Rust user expects; the runtime's threads bound
    /// how many run at once. (Go Zinx reads `""` as `"Hash"`: write `"Hash"` to
    /// get its behaviour.)
    #[default]
    Task,
    /// `"Hash"`: a fixed pool of `WorkerPoolSize` workers; a connection's
    /// messages go to worker `conn_id % WorkerPoolSize`, which it holds while its
    /// handler runs, awaits included: at most `WorkerPoolSize` handlers run at
    /// once, and connections sharing a worker wait for each other (Go Zinx's
    /// default).
    Hash,
    /// `"Bind"`: every connection gets a worker of its own for its lifetime.
    Bind,
    /// `"DynamicBind"`: a connection takes a free worker from a pool of
    /// `WorkerPoolSize` for its lifetime; when none is free it gets a temporary
    /// worker that ends with the connection.
    DynamicBind,
}

impl FromStr for WorkerMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let modes = [
            ("", WorkerMode::Task),
            ("Task", WorkerMode::Task),
            ("Hash", WorkerMode::Hash),
            ("Bind", WorkerMode::Bind),
            ("DynamicBind", WorkerMode::DynamicBind),
        ];
        parse_name(s, "WorkerMode", "worker mode", &modes)
    }
}

impl<'de> Deserialize<'de> for WorkerMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d)
    }
}

/// Parses one of `choices` by name, in any case, as the value of config key `key`;
/// the error names what was expected.
pub(crate) fn parse_name<T: Copy>(
    s: &str,
    key: &'static str,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, Error> {
    if let Some(&(_, value)) = choices
        .iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
    {
        return Ok(value);
    }
    let names: Vec<String> = choices
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    Err(Error::ConfigValue {
        key,
        message: format!("unknown {what} {s:?}, expected {expected}"),
    })
}

/// Deserializes a value written as a string its `FromStr` understands.
fn deserialize_parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = Error>,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// What happens when a message is sent to a connection whose send queue
/// (`MaxMsgChanLen` messages) is full: the peer is not reading fast enough.
///
/// Set with the `SendQueueFull` key (not in Go Zinx, whose `SendMsg` always waits).
/// [`Connection::try_send`](crate::Connection::try_send) never waits: it fails with
/// `QueueFull` under `Wait` and `Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum SendQueueFull {
    /// `"wait"`: [`Connection::send`](crate::Connection::send) waits for room (the
    /// slow peer slows its senders).
    #[default]
    Wait,
    /// `"fail"`: `send` fails at once with [`Error::QueueFull`]; the message is not
    /// sent and the connection stays open.
    Fail,
    /// `"close"`: the slow peer is closed (what was queued is still flushed, within
    /// the linger time) and the send fails with [`Error::Closed`], like Netty's
    /// high write watermark. Other senders never wait for a slow peer.
    Close,
}

impl FromStr for SendQueueFull {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let policies = [
            ("", SendQueueFull::Wait),
            ("wait", SendQueueFull::Wait),
            ("fail", SendQueueFull::Fail),
            ("close", SendQueueFull::Close),
        ];
        parse_name(s, "SendQueueFull", "policy", &policies)
    }
}

impl<'de> Deserialize<'de> for SendQueueFull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d)
    }
}

/// Declares the config struct once: field, Go key, type and default. From it come
/// the struct, its `Default` and its case-insensitive `Deserialize`.
macro_rules! config {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, $key:literal; )*) => {
        /// Server configuration: the keys of Go Zinx's zinx.json.
        ///
        /// Build one with [`Config::default`] and struct update syntax, or read one
        /// with [`Config::load`] / [`Config::from_file`].
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Config {
            $( $(#[$doc])* #[serde(rename = $key)] pub $field: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* }
            }
        }

        impl<'de> Deserialize<'de> for Config {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ConfigVisitor;

                impl<'de> Visitor<'de> for ConfigVisitor {
                    type Value = Config;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a JSON object of Zinx settings")
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
                        let mut cfg = Config::default();
                        while let Some(key) = map.next_key::<String>()? {
                            $(
                                if key.eq_ignore_ascii_case($key) {
                                    cfg.$field = field_value(&mut map, $key)?;
                                    check(&cfg, $key)
                                        .map_err(|e| de::Error::custom(format!("{}: {e}", $key)))?;
                                    continue;
                                }
                            )*
                            map.next_value::<IgnoredAny>()?;
                        }
                        Ok(cfg)
                    }
                }

                d.deserialize_map(ConfigVisitor)
            }
        }
    };
}

/// Reads one value, naming its key in the error (serde_json adds the position).
fn field_value<'de, A: MapAccess<'de>, T: serde::de::DeserializeOwned>(
    map: &mut A,
    key: &str,
) -> Result<T, A::Error> {
    let value: serde_json::Value = map.next_value()?;
    T::deserialize(value).map_err(|e| de::Error::custom(format!("{key}: {e}")))
}

/// Checks the value just read for `key` where a bad one would only show later
/// (binding a listener), so the error names the key, the file and the line.
fn check(cfg: &Config, key: &str) -> Result<(), String> {
    match key {
        "Host" if !is_host(&cfg.host) => Err(format!(
            "{:?} is neither an IP address nor a host name",
            cfg.host
        )),
        _ => Ok(()),
    }
}

/// An IP address (IPv6 with or without brackets), a host name, or empty (all
/// interfaces, as in Go).
fn is_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

config! {
    /// `Name`: the server's name, used in logs.
    name: String = "ZinxServerApp".to_owned(), "Name";
    /// `Host`: the address to listen on.
    host: String = "0.0.0.0".to_owned(), "Host";
    /// `TCPPort`: the TCP port to listen on (0 picks a free port).
    tcp_port: u16 = 8999, "TCPPort";
    /// `WsPort`: the WebSocket port (0 picks a free port), served when `Mode`
    /// names `websocket` (feature `ws`).
    ws_port: u16 = 9000, "WsPort";
    /// `WsPath`: the path WebSocket upgrades are served at; one ending in `/`
    /// takes every path under it.
    ws_path: String = "/".to_owned(), "WsPath";
    /// `KcpPort`: the KCP (reliable UDP) port, served when `Mode` names `kcp`
    /// (feature `kcp`).
    kcp_port: u16 = 9001, "KcpPort";
    /// `Mode`: the listeners: `"tcp"`, `"websocket"`, `"kcp"`, a comma list of
    /// them (any combination), or empty for TCP and WebSocket together, as in
    /// Go Zinx. See [`bind_listeners`](crate::server::bind_listeners).
    mode: String = "tcp".to_owned(), "Mode";
    /// `MaxConn`: connections beyond this many are closed right after accept
    /// (0 = no limit).
    max_conn: usize = 12000, "MaxConn";
    /// `MaxPacketSize`: the largest data length a frame may announce (0 = unbounded).
    max_packet_size: u32 = 4096, "MaxPacketSize";
    /// `WorkerPoolSize`: workers running handlers in Hash mode (0 = each connection handles its own).
    worker_pool_size: u32 = 10, "WorkerPoolSize";
    /// `MaxWorkerTaskLen`: async ops in flight per connection, and the bound of
    /// its queue of their results.
    max_worker_task_len: u32 = 1024, "MaxWorkerTaskLen";
    /// `WorkerMode`: `"Task"` (or empty; not in Go Zinx), `"Hash"`, `"Bind"` or
    /// `"DynamicBind"`. See [`WorkerMode`].
    worker_mode: WorkerMode = WorkerMode::Task, "WorkerMode";
    /// `MaxMsgChanLen`: the per-connection send queue length.
    max_msg_chan_len: u32 = 1024, "MaxMsgChanLen";
    /// `MaxMsgChanBytes` (not in Go Zinx): the per-connection send queue's bound
    /// in data bytes (headers not counted), beside `MaxMsgChanLen`'s in
    /// messages: the queue is full once
    /// either is reached (a message always fits an emptier queue, however long),
    /// like Netty's write-buffer high watermark. 0 = no byte bound.
    max_msg_chan_bytes: usize = 256 * 1024, "MaxMsgChanBytes";
    /// `SendQueueFull`: what a send to a full queue does (not in Go Zinx):
    /// `"wait"` (default), `"fail"` or `"close"`. See [`SendQueueFull`].
    send_queue_full: SendQueueFull = SendQueueFull::Wait, "SendQueueFull";
    /// `MaxMsgRate` (not in Go Zinx): messages per second a connection's handlers
    /// take; a faster peer is slowed down (its reads wait). 0 = no limit.
    max_msg_rate: u32 = 0, "MaxMsgRate";
    /// `MaxMsgBurst` (not in Go Zinx): messages handled at once before
    /// `MaxMsgRate` applies (0 = one second's worth).
    max_msg_burst: u32 = 0, "MaxMsgBurst";
    /// `MaxConnPerIP` (not in Go Zinx): connections one IP address (an IPv6 /64
    /// network) may hold; more are closed right after accept. 0 = no limit.
    max_conn_per_ip: usize = 0, "MaxConnPerIP";
    /// `MetricsAddr` (not in Go Zinx): where to serve Prometheus metrics
    /// (`GET /metrics`), e.g. `"127.0.0.1:9102"`; empty = none. Needs the crate's
    /// `metrics` feature.
    metrics_addr: String = String::new(), "MetricsAddr";
    /// `IOReadBuffSize`: the initial size of a connection's read buffer.
    io_read_buff_size: u32 = 1024, "IOReadBuffSize";
    /// `HeartbeatMax`: seconds of silence before a peer counts as dead.
    heartbeat_max: u64 = 10, "HeartbeatMax";
    /// `FrameTimeout` (not in Go Zinx): seconds a frame that has started
    /// arriving may take to arrive whole; a peer that sends part of a frame and
    /// stops is closed after it. 0 = no limit.
    frame_timeout: u64 = 30, "FrameTimeout";
    /// `IdleTimeout` (not in Go Zinx): seconds without a byte from the peer
    /// after which it is closed, with no heartbeat needed. 0 = off.
    idle_timeout: u64 = 0, "IdleTimeout";
    /// `HandshakeTimeout` (not in Go Zinx): seconds a connection's handshake
    /// (TLS, the WebSocket upgrade) may take before it is closed; at least 1.
    handshake_timeout: u64 = 10, "HandshakeTimeout";
    /// `ListenBacklog` (not in Go Zinx): connections the kernel queues for
    /// accept. 0 = the system's limit (`net.core.somaxconn` on Linux), as Go does.
    listen_backlog: u32 = 0, "ListenBacklog";
    /// `CertFile`: the TLS certificate chain, a PEM file (the server's
    /// certificate first). With `PrivateKeyFile` also set, the TCP port speaks
    /// TLS, as in Go Zinx (feature `tls`); one without the other, or either in
    /// a build without the feature, is an error at startup. See
    /// [`bind_listeners`](crate::server::bind_listeners).
    cert_file: String = String::new(), "CertFile";
    /// `PrivateKeyFile`: the private key of `CertFile`'s certificate, a PEM file
    /// (PKCS#8, PKCS#1 or SEC1).
    private_key_file: String = String::new(), "PrivateKeyFile";
    /// `KcpACKNoDelay`: a KCP session acknowledges each datagram at once
    /// instead of on its next tick.
    kcp_ack_no_delay: bool = false, "KcpACKNoDelay";
    /// `KcpStreamMode`: KCP carries a byte stream (segments filled up), not
    /// messages.
    kcp_stream_mode: bool = true, "KcpStreamMode";
    /// `KcpNoDelay`: ikcp's `nodelay` (non-zero: a 30 ms minimum resend time).
    kcp_no_delay: u32 = 1, "KcpNoDelay";
    /// `KcpInterval`: a KCP session's clock tick in milliseconds (10..=5000).
    kcp_interval: u32 = 10, "KcpInterval";
    /// `KcpResend`: fast resend after this many later segments were
    /// acknowledged (0 = off).
    kcp_resend: u32 = 2, "KcpResend";
    /// `KcpNc`: non-zero turns KCP's congestion window off.
    kcp_nc: u32 = 1, "KcpNc";
    /// `KcpSendWindow`: a KCP session's send window in segments (1..=1024).
    kcp_send_window: u32 = 32, "KcpSendWindow";
    /// `KcpRecvWindow`: a KCP session's receive window in segments
    /// (1..=1024; ikcp uses at least 128).
    kcp_recv_window: u32 = 32, "KcpRecvWindow";
    /// `KcpFecDataShards`: must be 0 (FEC is not implemented: any other value
    /// is an error when KCP is served).
    kcp_fec_data_shards: u32 = 0, "KcpFecDataShards";
    /// `KcpFecParityShards`: must be 0, as `KcpFecDataShards`.
    kcp_fec_parity_shards: u32 = 0, "KcpFecParityShards";
    /// `LogDir`: Zinx's log directory (read for compatibility; logs go to `tracing`).
    log_dir: String = "./log".to_owned(), "LogDir";
    /// `LogFile`: Zinx's log file (read for compatibility).
    log_file: String = String::new(), "LogFile";
    /// `LogIsolationLevel`: 0 logs all, 1 no debug, 2 no info, 3 no warnings.
    /// See [`Config::log_level`].
    log_isolation_level: i32 = 0, "LogIsolationLevel";
    /// `LogSaveDays`: read for compatibility.
    log_save_days: i32 = 0, "LogSaveDays";
    /// `LogFileSize`: read for compatibility.
    log_file_size: u64 = 64 << 20, "LogFileSize";
    /// `LogCons`: read for compatibility.
    log_cons: bool = false, "LogCons";
    /// `RouterSlicesMode`: read for compatibility (both routing styles are always available).
    router_slices_mode: bool = false, "RouterSlicesMode";
    /// `RequestPoolMode`: read for compatibility (requests are not pooled).
    request_pool_mode: bool = false, "RequestPoolMode";
}

impl Config {
    /// Parses zinx.json text.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigParse`] with the position of the first problem (path
    /// `<string>`).
    pub fn from_json_str(json: &str) -> Result<Config, Error> {
        parse(json, Path::new("<string>"))
    }

    /// Reads and parses a zinx.json file.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigRead`] when the file cannot be read, [`Error::ConfigParse`]
    /// naming the file, line and column when it is not valid.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        parse(&text, path)
    }

    /// Loads the configuration the way Go Zinx does: the file named by
    /// `ZINX_CONFIG_FILE_PATH`, else `./conf/zinx.json`, else the defaults.
    ///
    /// # Errors
    ///
    /// As [`Config::from_file`]. A file named by the environment variable must
    /// exist (Go Zinx would silently use defaults); a missing `./conf/zinx.json`
    /// just means defaults.
    pub fn load() -> Result<Config, Error> {
        Config::load_from(
            std::env::var_os(CONFIG_PATH_ENV).as_deref(),
            Path::new(DEFAULT_CONFIG_PATH),
        )
    }

    /// [`Config::load`] with the environment value and the default path given.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_from(env_path: Option<&OsStr>, default_path: &Path) -> Result<Config, Error> {
        match env_path.filter(|p| !p.is_empty()) {
            Some(path) => Config::from_file(path),
            None if default_path.exists() => Config::from_file(default_path),
            None => Ok(Config::default()),
        }
    }

    /// The `tracing` level filter for `LogIsolationLevel`: 0 (or less) all,
    /// 1 no debug, 2 no info, 3 (or more) errors only.
    #[must_use]
    pub fn log_level(&self) -> LevelFilter {
        match self.log_isolation_level {
            i32::MIN..=0 => LevelFilter::TRACE,
            1 => LevelFilter::INFO,
            2 => LevelFilter::WARN,
            _ => LevelFilter::ERROR,
        }
    }

    /// `Host:TCPPort`, ready for `TcpListener::bind`.
    #[must_use]
    pub fn tcp_addr(&self) -> String {
        self.addr(self.tcp_port)
    }

    /// `Host:port`, with an IPv6 host in brackets and an empty one as
    /// `0.0.0.0` (every interface, as Go listens on `":port"`).
    #[must_use]
    pub fn addr(&self, port: u16) -> String {
        match self.host.as_str() {
            "" => format!("0.0.0.0:{port}"),
            host if host.contains(':') && !host.starts_with('[') => format!("[{host}]:{port}"),
            host => format!("{host}:{port}"),
        }
    }

    /// `FrameTimeout` as a duration (`None`: off).
    #[must_use]
    pub fn frame_timeout(&self) -> Option<std::time::Duration> {
        seconds(self.frame_timeout)
    }

    /// `IdleTimeout` as a duration (`None`: off).
    #[must_use]
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        seconds(self.idle_timeout)
    }
}

/// `n` seconds, or `None` for 0.
fn seconds(n: u64) -> Option<std::time::Duration> {
    (n > 0).then(|| std::time::Duration::from_secs(n))
}

fn parse(json: &str, path: &Path) -> Result<Config, Error> {
    serde_json::from_str(json).map_err(|e| {
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let text = e.to_string();
        let message = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
        Error::ConfigParse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zinx-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn defaults_match_go_zinx() {
        let c = Config::default();
        assert_eq!(c.name, "ZinxServerApp");
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.tcp_port, 8999);
        assert_eq!(
            (c.ws_port, c.ws_path.as_str(), c.kcp_port),
            (9000, "/", 9001)
        );
        assert_eq!(c.max_conn, 12000);
        assert_eq!(c.max_packet_size, 4096);
        assert_eq!(c.worker_pool_size, 10);
        assert_eq!(c.max_worker_task_len, 1024);
        assert_eq!(c.worker_mode, WorkerMode::Task, "ours, not Go's Hash");
        assert_eq!(c.max_msg_chan_len, 1024);
        assert_eq!(c.io_read_buff_size, 1024);
        assert_eq!(c.heartbeat_max, 10);
        assert_eq!(c.log_file_size, 64 << 20);
        assert!(!c.kcp_ack_no_delay && c.kcp_stream_mode);
        assert_eq!(
            (c.kcp_no_delay, c.kcp_interval, c.kcp_resend, c.kcp_nc),
            (1, 10, 2, 1)
        );
        assert_eq!((c.kcp_send_window, c.kcp_recv_window), (32, 32));
        assert_eq!((c.kcp_fec_data_shards, c.kcp_fec_parity_shards), (0, 0));
    }

    #[test]
    fn empty_object_is_defaults() {
        assert_eq!(Config::from_json_str("{}").unwrap(), Config::default());
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let c = Config::from_json_str(
            r#"{"TcpPort": 1, "MAXCONN": 5, "workermode": "DynamicBind",
                "KcpACKNoDelay": true, "Whatever": {"nested": [1, 2]},
                "maxPacketSize": 0, "iOREADbuffsize": 64}"#,
        )
        .unwrap();
        assert_eq!(c.tcp_port, 1);
        assert_eq!(c.max_conn, 5);
        assert_eq!(c.worker_mode, WorkerMode::DynamicBind);
        assert_eq!(c.max_packet_size, 0);
        assert_eq!(c.io_read_buff_size, 64);
    }

    #[test]
    fn later_duplicate_key_wins_like_go() {
        let c = Config::from_json_str(r#"{"TCPPort": 1, "tcpport": 2}"#).unwrap();
        assert_eq!(c.tcp_port, 2);
    }

    #[test]
    fn worker_mode_names() {
        for (text, mode) in [
            ("", WorkerMode::Task),
            ("Task", WorkerMode::Task),
            ("Hash", WorkerMode::Hash),
            ("Bind", WorkerMode::Bind),
            ("DynamicBind", WorkerMode::DynamicBind),
        ] {
            let json = format!(r#"{{"WorkerMode": "{text}"}}"#);
            assert_eq!(Config::from_json_str(&json).unwrap().worker_mode, mode);
        }
    }

    #[test]
    fn unknown_names_say_what_was_expected() {
        let msg = |e: Error| match e {
            Error::ConfigValue { key, message } => format!("{key}: {message}"),
            other => panic!("{other}"),
        };
        assert_eq!(
            msg("x".parse::<WorkerMode>().unwrap_err()),
            r#"WorkerMode: unknown worker mode "x", expected "Task", "Hash", "Bind" or "DynamicBind""#
        );
        assert_eq!(
            msg("x".parse::<SendQueueFull>().unwrap_err()),
            r#"SendQueueFull: unknown policy "x", expected "wait", "fail" or "close""#
        );
        assert_eq!(
            msg("x".parse::<crate::Layout>().unwrap_err()),
            r#"format: unknown packet layout "x", expected "tlv" or "ltv""#
        );
    }

    #[test]
    fn send_queue_full_policies() {
        assert_eq!(Config::default().send_queue_full, SendQueueFull::Wait);
        for (text, policy) in [
            ("", SendQueueFull::Wait),
            ("wait", SendQueueFull::Wait),
            ("Fail", SendQueueFull::Fail),
            ("CLOSE", SendQueueFull::Close),
        ] {
            let json = format!(r#"{{"SendQueueFull": "{text}"}}"#);
            assert_eq!(
                Config::from_json_str(&json).unwrap().send_queue_full,
                policy
            );
        }
        let err = Config::from_json_str(r#"{"SendQueueFull": "drop"}"#).unwrap_err();
        assert!(err.to_string().contains("SendQueueFull"), "{err}");
    }

    #[test]
    fn syntax_error_names_position() {
        let err = Config::from_json_str("{\n  \"TCPPort\": 1,\n  oops\n}").unwrap_err();
        match err {
            Error::ConfigParse {
                line,
                column,
                ref path,
                ..
            } => {
                assert_eq!(line, 3);
                assert_eq!(column, 3);
                assert_eq!(path, Path::new("<string>"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn type_error_names_key_and_position() {
        let err = Config::from_json_str("{\n\"TCPPort\": \"eighty\"}").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("TCPPort"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(
            !text.contains("column") || text.matches("column").count() == 1,
            "{text}"
        );
    }

    #[test]
    fn out_of_range_and_bad_enum_are_errors() {
        assert!(
            Config::from_json_str(r#"{"TCPPort": 70000}"#)
                .unwrap_err()
                .is_config()
        );
        assert!(
            Config::from_json_str(r#"{"MaxConn": -1}"#)
                .unwrap_err()
                .is_config()
        );
        let err = Config::from_json_str(r#"{"WorkerMode": "Round"}"#).unwrap_err();
        assert!(err.to_string().contains("Round"), "{err}");
    }

    #[test]
    fn non_object_is_an_error() {
        assert!(Config::from_json_str("[1, 2]").unwrap_err().is_config());
        assert!(Config::from_json_str("").unwrap_err().is_config());
    }

    #[test]
    fn log_levels() {
        let level = |n| {
            Config {
                log_isolation_level: n,
                ..Config::default()
            }
            .log_level()
        };
        assert_eq!(level(0), LevelFilter::TRACE);
        assert_eq!(level(1), LevelFilter::INFO);
        assert_eq!(level(2), LevelFilter::WARN);
        assert_eq!(level(3), LevelFilter::ERROR);
    }

    #[test]
    fn load_order_env_then_default_path_then_defaults() {
        let dir = temp_dir("load");
        let env_file = dir.join("env.json");
        let default_file = dir.join("zinx.json");
        std::fs::write(&env_file, r#"{"Name": "from-env"}"#).unwrap();
        std::fs::write(&default_file, r#"{"Name": "from-default"}"#).unwrap();

        let c = Config::load_from(Some(env_file.as_os_str()), &default_file).unwrap();
        assert_eq!(c.name, "from-env");
        let c = Config::load_from(None, &default_file).unwrap();
        assert_eq!(c.name, "from-default");
        let c = Config::load_from(Some(OsStr::new("")), &default_file).unwrap();
        assert_eq!(c.name, "from-default");
        let c = Config::load_from(None, &dir.join("missing.json")).unwrap();
        assert_eq!(c, Config::default());

        let err = Config::load_from(Some(dir.join("missing.json").as_os_str()), &default_file)
            .unwrap_err();
        assert!(matches!(err, Error::ConfigRead { .. }), "{err}");
        assert!(err.to_string().contains("missing.json"));
    }

    #[test]
    fn malformed_file_names_the_file() {
        let dir = temp_dir("malformed");
        let file = dir.join("bad.json");
        std::fs::write(&file, "{\"TCPPort\": }").unwrap();
        let err = Config::from_file(&file).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bad.json") && text.contains("line 1"),
            "{text}"
        );
    }

    #[test]
    fn a_host_that_is_no_address_or_name_names_the_key_and_position() {
        for bad in [
            "not a host!",
            "exa mple.com",
            "-lead.example",
            "a..b",
            "1.2.3.4:80",
        ] {
            let json = format!("{{\n  \"Name\": \"x\",\n  \"Host\": {bad:?} }}");
            let text = Config::from_json_str(&json).unwrap_err().to_string();
            assert!(
                text.contains("Host") && text.contains("line 3"),
                "{bad}: {text}"
            );
        }
        for good in [
            "",
            "0.0.0.0",
            "::1",
            "[::1]",
            "localhost",
            "game-1.example.com.",
        ] {
            let json = format!("{{\"Host\": {good:?}}}");
            assert_eq!(Config::from_json_str(&json).unwrap().host, good);
        }
    }

    #[test]
    fn new_limits_have_safe_defaults() {
        let c = Config::default();
        assert_eq!(c.max_msg_chan_bytes, 256 * 1024);
        assert_eq!(c.frame_timeout(), Some(std::time::Duration::from_secs(30)));
        assert_eq!(c.idle_timeout(), None);
        assert_eq!(c.listen_backlog, 0);
        let c = Config::from_json_str(r#"{"FrameTimeout": 0, "IdleTimeout": 5}"#).unwrap();
        assert_eq!(c.frame_timeout(), None);
        assert_eq!(c.idle_timeout(), Some(std::time::Duration::from_secs(5)));
    }

    #[test]
    fn tcp_addr_brackets_ipv6() {
        let mut c = Config::default();
        assert_eq!(c.tcp_addr(), "0.0.0.0:8999");
        c.host = "::1".into();
        assert_eq!(c.tcp_addr(), "[::1]:8999");
        c.host = String::new();
        assert_eq!(c.tcp_addr(), "0.0.0.0:8999");
    }
}
