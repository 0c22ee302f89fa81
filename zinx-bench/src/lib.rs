//! Pieces of the benchmark tools: Zinx frames written from scratch (so the
//! yardstick does not share code with the framework it measures), request
//! payloads that make every reply checkable, the result record, and the
//! PERFORMANCE.md report.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub mod net;

/// The two Zinx packet layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `[msgID u32 BE][len u32 BE][data]`.
    Tlv,
    /// `[len u32 LE][msgID u32 LE][data]`.
    Ltv,
}

/// Header length of both layouts.
pub const HEADER: usize = 8;

impl Format {
    /// Appends a header for `id` and `len`.
    pub fn put_header(self, id: u32, len: u32, dst: &mut Vec<u8>) {
        match self {
            Format::Tlv => {
                dst.extend_from_slice(&id.to_be_bytes());
                dst.extend_from_slice(&len.to_be_bytes());
            }
            Format::Ltv => {
                dst.extend_from_slice(&len.to_le_bytes());
                dst.extend_from_slice(&id.to_le_bytes());
            }
        }
    }

    /// `(id, len)` of the header at the start of `buf`, if 8 bytes are there.
    #[must_use]
    pub fn parse_header(self, buf: &[u8]) -> Option<(u32, u32)> {
        let h: &[u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
        let a = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let b = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        Some(match self {
            Format::Tlv => (a, b),
            Format::Ltv => (b.swap_bytes(), a.swap_bytes()),
        })
    }
}

/// Request payloads: 16 bytes identifying the connection and the sequence number,
/// then a filler pattern that starts at an offset depending on both. A reply from
/// another connection, out of order, truncated or altered does not match.
#[derive(Debug, Clone)]
pub struct Payloads {
    len: usize,
    pattern: Vec<u8>,
}

const PATTERN_PERIOD: usize = 251;

impl Payloads {
    /// Payloads of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        let pattern = (0..len + PATTERN_PERIOD)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        Payloads { len, pattern }
    }

    /// Payload length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero-length payloads.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// First a mix of both numbers (so even 8 bytes tell connection and sequence
    /// apart), then the connection.
    fn tag(conn: u64, seq: u64) -> [u8; 16] {
        let mixed =
            seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ conn.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&mixed.to_be_bytes());
        tag[8..].copy_from_slice(&conn.to_be_bytes());
        tag
    }

    fn offset(conn: u64, seq: u64) -> usize {
        (conn.wrapping_mul(31).wrapping_add(seq) % PATTERN_PERIOD as u64) as usize
    }

    /// Appends the whole frame of request `seq` on connection `conn` (which an
    /// echo server sends back unchanged).
    pub fn put_frame(&self, format: Format, id: u32, conn: u64, seq: u64, dst: &mut Vec<u8>) {
        format.put_header(id, self.len as u32, dst);
        self.put(conn, seq, dst);
    }

    /// Appends the payload of request `seq` on connection `conn`.
    pub fn put(&self, conn: u64, seq: u64, dst: &mut Vec<u8>) {
        let tag = Self::tag(conn, seq);
        let head = self.len.min(16);
        dst.extend_from_slice(&tag[..head]);
        let off = Self::offset(conn, seq);
        dst.extend_from_slice(&self.pattern[off + head..off + self.len]);
    }

    /// True if `data` is exactly the payload of request `seq` on `conn`.
    #[must_use]
    pub fn matches(&self, conn: u64, seq: u64, data: &[u8]) -> bool {
        if data.len() != self.len {
            return false;
        }
        let head = self.len.min(16);
        let off = Self::offset(conn, seq);
        data[..head] == Self::tag(conn, seq)[..head]
            && data[head..] == self.pattern[off + head..off + self.len]
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// One run of the load generator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// A name for the scenario (set by the caller, e.g. the bench script).
    pub scenario: String,
    /// Which server was measured.
    pub server: String,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection (0 in open-loop mode).
    pub pipeline: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Replies counted in the measured window.
    pub replies: u64,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Replies per second.
    pub replies_per_sec: f64,
    /// Latency of the measured replies.
    pub latency_us: Latency,
    /// Replies that did not match their request (ID, length, bytes, order).
    pub mismatches: u64,
    /// Connections that failed (connect, I/O, early close, a reply mismatch).
    pub errors: u64,
    /// Server CPU seconds (user + system) during the measured window.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU microseconds per reply.
    pub server_cpu_us_per_reply: Option<f64>,
    /// Server resident memory before connecting, in KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server resident memory at the end (or once connected), in KiB.
    pub server_rss_kib: Option<u64>,
    /// Server resident memory after one message on every connection, in KiB
    /// (connect-only mode).
    pub server_rss_after_message_kib: Option<u64>,
    /// The failed connections of `errors` by the reason each failed: they add up
    /// to `errors` (added after the fields above; absent from older result
    /// lines, read as all zero).
    #[serde(default)]
    pub errors_by_reason: ErrorsByReason,
    /// Where the first reply seen that did not match its request differed.
    #[serde(default)]
    pub first_mismatch: Option<Mismatch>,
}

impl RunReport {
    /// Server RSS growth per connection in bytes, once connected.
    #[must_use]
    pub fn rss_per_conn(&self) -> Option<f64> {
        per_conn(self.server_rss_start_kib?, self.server_rss_kib?, self.conns)
    }

    /// Server RSS growth per connection in bytes, after one message each.
    #[must_use]
    pub fn rss_per_conn_after_message(&self) -> Option<f64> {
        per_conn(
            self.server_rss_start_kib?,
            self.server_rss_after_message_kib?,
            self.conns,
        )
    }
}

fn per_conn(start_kib: u64, end_kib: u64, conns: usize) -> Option<f64> {
    (conns > 0).then(|| end_kib.saturating_sub(start_kib) as f64 * 1024.0 / conns as f64)
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The server refused the connection (nothing listening there).
    ConnectionRefused,
    /// The server reset the connection.
    ResetByPeer,
    /// The server closed the connection (end of stream, or a write after it
    /// closed).
    ClosedByServer,
    /// A reply did not match its request.
    ReplyMismatch,
    /// No reply (or connection) within the time allowed.
    Timeout,
    /// Any other I/O error.
    OtherIo,
}

impl Reason {
    /// Every reason, in the order reports list them.
    pub const ALL: [Reason; 6] = [
        Reason::ConnectionRefused,
        Reason::ResetByPeer,
        Reason::ClosedByServer,
        Reason::ReplyMismatch,
        Reason::Timeout,
        Reason::OtherIo,
    ];

    /// The reason an I/O error stands for.
    #[must_use]
    pub fn of_io(e: &std::io::Error) -> Reason {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionRefused => Reason::ConnectionRefused,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Reason::ResetByPeer,
            ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => Reason::ClosedByServer,
            ErrorKind::TimedOut => Reason::Timeout,
            _ => Reason::OtherIo,
        }
    }

    /// How the human report names it.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Reason::ConnectionRefused => "connection refused",
            Reason::ResetByPeer => "reset by peer",
            Reason::ClosedByServer => "closed by server (EOF)",
            Reason::ReplyMismatch => "reply mismatch",
            Reason::Timeout => "timeout",
            Reason::OtherIo => "other I/O",
        }
    }
}

/// Failed connections counted by reason: each failed connection once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorsByReason {
    /// The server refused the connection.
    pub connection_refused: u64,
    /// The server reset the connection.
    pub reset_by_peer: u64,
    /// The server closed the connection.
    pub closed_by_server: u64,
    /// A reply did not match its request.
    pub reply_mismatch: u64,
    /// Nothing arrived within the time allowed.
    pub timeout: u64,
    /// Any other I/O error.
    pub other_io: u64,
}

impl ErrorsByReason {
    /// The count of `reason`.
    #[must_use]
    pub fn get(&self, reason: Reason) -> u64 {
        match reason {
            Reason::ConnectionRefused => self.connection_refused,
            Reason::ResetByPeer => self.reset_by_peer,
            Reason::ClosedByServer => self.closed_by_server,
            Reason::ReplyMismatch => self.reply_mismatch,
            Reason::Timeout => self.timeout,
            Reason::OtherIo => self.other_io,
        }
    }

    /// Adds `n` to the count of `reason`.
    pub fn add(&mut self, reason: Reason, n: u64) {
        let count = match reason {
            Reason::ConnectionRefused => &mut self.connection_refused,
            Reason::ResetByPeer => &mut self.reset_by_peer,
            Reason::ClosedByServer => &mut self.closed_by_server,
            Reason::ReplyMismatch => &mut self.reply_mismatch,
            Reason::Timeout => &mut self.timeout,
            Reason::OtherIo => &mut self.other_io,
        };
        *count += n;
    }

    /// All the counts together.
    #[must_use]
    pub fn total(&self) -> u64 {
        Reason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    /// The reasons that occurred with their counts, e.g. "3 connection refused,
    /// 1 reply mismatch (first at byte 28 of the reply frame: expected 0x1f, got
    /// 0x20)", or "" if none did.
    #[must_use]
    pub fn describe(&self, first_mismatch: Option<&Mismatch>) -> String {
        let mut parts = Vec::new();
        for reason in Reason::ALL {
            let n = self.get(reason);
            if n == 0 {
                continue;
            }
            let mut part = format!("{n} {}", reason.label());
            if let (Reason::ReplyMismatch, Some(m)) = (reason, first_mismatch) {
                let _ = write!(part, " (first {m})");
            }
            parts.push(part);
        }
        parts.join(", ")
    }
}

/// Where a reply first differed from the one expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// Offset of the first differing byte in the reply frame, its 8-byte header
    /// included.
    pub offset: u64,
    /// The byte expected there; `None` where the expected frame had already
    /// ended (or no reply was expected at all).
    pub expected: Option<u8>,
    /// The byte received there; `None` where the reply had already ended.
    pub got: Option<u8>,
}

impl Mismatch {
    /// Where `got` first differs from `expected`. If one is a prefix of the
    /// other, that is where the shorter ends (equal frames give their length
    /// and no bytes).
    #[must_use]
    pub fn between(expected: &[u8], got: &[u8]) -> Mismatch {
        let offset = expected
            .iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(got.len()));
        Mismatch {
            offset: offset as u64,
            expected: expected.get(offset).copied(),
            got: got.get(offset).copied(),
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let byte = |b: Option<u8>| b.map_or("nothing".to_owned(), |b| format!("{b:#04x}"));
        write!(
            f,
            "at byte {} of the reply frame: expected {}, got {}",
            self.offset,
            byte(self.expected),
            byte(self.got)
        )
    }
}

/// CPU seconds (user + system) a process has used, from /proc (Linux).
#[must_use]
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Resident set size of a process in KiB, from /proc (Linux).
#[must_use]
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Renders the throughput and latency tables of PERFORMANCE.md from runs: for
/// each scenario, the best run of each server, and the ratios of `server`
/// against `baseline`.
#[must_use]
pub fn render_tables(runs: &[RunReport], server: &str, baseline: &str) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for r in runs
        .iter()
        .filter(|r| r.server_rss_after_message_kib.is_none())
    {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | server | replies/s | server CPU µs/reply | p50 µs | p99 µs | p99.9 µs | max µs | RSS MiB | errors |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = String::new();
    let _ = writeln!(
        ratios,
        "| scenario | replies/s ratio | CPU/reply ratio | p99 ratio | per round: replies/s ratio | per round: CPU/reply ratio | per round: p99 ratio |"
    );
    let _ = writeln!(ratios, "|---|---:|---:|---:|---:|---:|---:|");
    for scenario in scenarios {
        let pick = |name: &str| {
            best(
                runs.iter()
                    .filter(|r| r.scenario == scenario && r.server == name),
            )
        };
        for run in [pick(baseline), pick(server)].into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                run.scenario,
                run.server,
                run.replies_per_sec,
                run.server_cpu_us_per_reply
                    .map_or("-".to_owned(), |c| format!("{c:.2}")),
                run.latency_us.p50,
                run.latency_us.p99,
                run.latency_us.p999,
                run.latency_us.max,
                run.server_rss_kib
                    .map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
                run.errors + run.mismatches,
            );
        }
        if let (Some(s), Some(b)) = (pick(server), pick(baseline)) {
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_owned(),
            };
            let per_round = |metric: fn(&RunReport) -> Option<f64>| {
                rounds(
                    runs.iter()
                        .filter(|r| r.scenario == scenario && r.server == server),
                    runs.iter()
                        .filter(|r| r.scenario == scenario && r.server == baseline),
                    metric,
                )
            };
            let _ = writeln!(
                ratios,
                "| {} | {} | {} | {} | {} | {} | {} |",
                scenario,
                ratio(Some(s.replies_per_sec), Some(b.replies_per_sec)),
                ratio(s.server_cpu_us_per_reply, b.server_cpu_us_per_reply),
                ratio(Some(s.latency_us.p99 as f64), Some(b.latency_us.p99 as f64)),
                per_round(|r| Some(r.replies_per_sec)),
                per_round(|r| r.server_cpu_us_per_reply),
                per_round(|r| Some(r.latency_us.p99 as f64)),
            );
        }
    }
    format!(
        "{out}\nRatios of `{server}` to `{baseline}` (same run): first of the best round of each, \
         then of each round of `{server}` against the `{baseline}` round run next to it, \
         as the median (and range) over the rounds, which a disturbance of one round does not move:\n\n{ratios}"
    )
}

/// Renders the memory table of PERFORMANCE.md from connect-only runs: server RSS
/// growth per connection when idle and after one message each.
#[must_use]
pub fn render_memory(runs: &[RunReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | server | connections | errors | RSS before MiB | idle bytes/conn | after one message bytes/conn |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for run in runs
        .iter()
        .filter(|r| r.server_rss_after_message_kib.is_some())
    {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            run.scenario,
            run.server,
            run.conns,
            run.errors + run.mismatches,
            run.server_rss_start_kib
                .map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
            run.rss_per_conn()
                .map_or("-".to_owned(), |b| format!("{b:.0}")),
            run.rss_per_conn_after_message()
                .map_or("-".to_owned(), |b| format!("{b:.0}")),
        );
    }
    out
}

/// The ratio of `metric` in each round (the n-th run of `server` against the n-th
/// of `baseline`, which ran next to it), as "median (min–max)".
fn rounds<'a>(
    server: impl Iterator<Item = &'a RunReport>,
    baseline: impl Iterator<Item = &'a RunReport>,
    metric: fn(&RunReport) -> Option<f64>,
) -> String {
    let mut ratios: Vec<f64> = server
        .zip(baseline)
        .filter_map(|(s, b)| match (metric(s), metric(b)) {
            (Some(s), Some(b)) if b > 0.0 => Some(s / b),
            _ => None,
        })
        .collect();
    if ratios.is_empty() {
        return "-".to_owned();
    }
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let median = if ratios.len() % 2 == 0 {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    } else {
        ratios[mid]
    };
    format!(
        "{median:.2} ({:.2}–{:.2})",
        ratios[0],
        ratios[ratios.len() - 1]
    )
}

/// The run with the most replies/s: on a shared machine a disturbance only ever
/// slows a run down, so the best round is the least disturbed one. (A median
/// of three rounds picked a disturbed baseline round twice in one run.)
fn best<'a>(runs: impl Iterator<Item = &'a RunReport>) -> Option<&'a RunReport> {
    runs.max_by(|a, b| a.replies_per_sec.total_cmp(&b.replies_per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_both_layouts() {
        for format in [Format::Tlv, Format::Ltv] {
            let mut buf = Vec::new();
            format.put_header(0x0102_0304, 77, &mut buf);
            assert_eq!(format.parse_header(&buf), Some((0x0102_0304, 77)));
        }
        let mut buf = Vec::new();
        Format::Ltv.put_header(1, 3, &mut buf);
        assert_eq!(buf, [3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(Format::Tlv.parse_header(&buf[..7]), None);
    }

    #[test]
    fn payloads_detect_mixups() {
        for len in [0usize, 1, 8, 16, 17, 64, 4096] {
            let p = Payloads::new(len);
            let mut a = Vec::new();
            p.put(3, 10, &mut a);
            assert_eq!(a.len(), len);
            assert!(p.matches(3, 10, &a));
            if len >= 8 {
                assert!(!p.matches(4, 10, &a), "other connection, len {len}");
                assert!(!p.matches(3, 11, &a), "other sequence, len {len}");
            }
            if len > 0 {
                let mut bad = a.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(!p.matches(3, 10, &bad), "flipped byte, len {len}");
                assert!(!p.matches(3, 10, &a[..len - 1]));
            }
        }
    }

    #[test]
    fn json_keeps_every_field_in_place_and_appends_the_new_ones() {
        let line = serde_json::to_string(&RunReport::default()).unwrap();
        // The line of a default report before errors_by_reason existed, up to its
        // closing brace: scripts/bench.sh and `zinx-bench report` read these.
        let old = r#"{"scenario":"","server":"","conns":0,"pipeline":0,"payload":0,"replies":0,"seconds":0.0,"replies_per_sec":0.0,"latency_us":{"p50":0,"p90":0,"p99":0,"p999":0,"max":0},"mismatches":0,"errors":0,"server_cpu_secs":null,"server_cpu_us_per_reply":null,"server_rss_start_kib":null,"server_rss_kib":null,"server_rss_after_message_kib":null"#;
        assert_eq!(
            line,
            format!(
                r#"{old},"errors_by_reason":{{"connection_refused":0,"reset_by_peer":0,"closed_by_server":0,"reply_mismatch":0,"timeout":0,"other_io":0}},"first_mismatch":null}}"#
            )
        );
        // bench.sh takes the number after the last `"replies":` of the line.
        assert_eq!(line.matches(r#""replies":"#).count(), 1);
    }

    #[test]
    fn result_lines_without_the_new_fields_still_parse() {
        let old = r#"{"scenario":"s","server":"zinx","conns":2,"pipeline":1,"payload":64,"replies":5,"seconds":1.0,"replies_per_sec":5.0,"latency_us":{"p50":1,"p90":2,"p99":3,"p999":4,"max":5},"mismatches":0,"errors":1,"server_cpu_secs":null,"server_cpu_us_per_reply":null,"server_rss_start_kib":null,"server_rss_kib":null,"server_rss_after_message_kib":null}"#;
        let run: RunReport = serde_json::from_str(old).unwrap();
        assert_eq!(run.errors, 1);
        assert_eq!(run.errors_by_reason, ErrorsByReason::default());
        assert_eq!(run.first_mismatch, None);
        // And a new line reads back as written.
        let mut new = run.clone();
        new.errors_by_reason.add(Reason::ReplyMismatch, 1);
        new.first_mismatch = Some(Mismatch::between(&[1, 2, 3], &[1, 9, 3]));
        let back: RunReport = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn mismatch_is_the_first_differing_byte() {
        let m = |e: &[u8], g: &[u8]| Mismatch::between(e, g);
        let at = |offset: u64, expected: Option<u8>, got: Option<u8>| Mismatch {
            offset,
            expected,
            got,
        };
        assert_eq!(m(&[1, 2, 3, 4], &[1, 2, 7, 8]), at(2, Some(3), Some(7)));
        assert_eq!(m(&[5], &[6]), at(0, Some(5), Some(6)));
        // One a prefix of the other: where the shorter ends.
        assert_eq!(m(&[1, 2], &[1, 2, 3]), at(2, None, Some(3)));
        assert_eq!(m(&[1, 2, 3], &[1]), at(1, Some(2), None));
        // No reply expected at all.
        assert_eq!(m(&[], &[9, 9]), at(0, None, Some(9)));
        assert_eq!(
            at(28, Some(0x1f), Some(0x20)).to_string(),
            "at byte 28 of the reply frame: expected 0x1f, got 0x20"
        );
        assert_eq!(
            at(0, None, Some(9)).to_string(),
            "at byte 0 of the reply frame: expected nothing, got 0x09"
        );
    }

    #[test]
    fn io_errors_have_their_reasons() {
        use std::io::{Error, ErrorKind};
        let of = |kind: ErrorKind| Reason::of_io(&Error::from(kind));
        assert_eq!(of(ErrorKind::ConnectionRefused), Reason::ConnectionRefused);
        assert_eq!(of(ErrorKind::ConnectionReset), Reason::ResetByPeer);
        assert_eq!(of(ErrorKind::UnexpectedEof), Reason::ClosedByServer);
        assert_eq!(of(ErrorKind::BrokenPipe), Reason::ClosedByServer);
        assert_eq!(of(ErrorKind::TimedOut), Reason::Timeout);
        assert_eq!(of(ErrorKind::PermissionDenied), Reason::OtherIo);
        assert_eq!(
            Reason::of_io(&Error::from_raw_os_error(111)),
            Reason::ConnectionRefused,
            "ECONNREFUSED as the OS reports it"
        );
    }

    #[test]
    fn reasons_are_counted_and_described() {
        let mut e = ErrorsByReason::default();
        assert_eq!(e.describe(None), "");
        e.add(Reason::ConnectionRefused, 3);
        e.add(Reason::ReplyMismatch, 1);
        e.add(Reason::OtherIo, 2);
        assert_eq!(e.total(), 6);
        for reason in Reason::ALL {
            let mut one = ErrorsByReason::default();
            one.add(reason, 1);
            assert_eq!((one.get(reason), one.total()), (1, 1), "{reason:?}");
        }
        let first = Mismatch {
            offset: 28,
            expected: Some(0x1f),
            got: Some(0x20),
        };
        assert_eq!(
            e.describe(Some(&first)),
            "3 connection refused, 1 reply mismatch (first at byte 28 of the reply frame: \
             expected 0x1f, got 0x20), 2 other I/O"
        );
    }

    #[test]
    fn report_picks_best_rounds_and_ratios() {
        let run = |server: &str, rps: f64, cpu: f64| RunReport {
            scenario: "s".into(),
            server: server.into(),
            replies_per_sec: rps,
            server_cpu_us_per_reply: Some(cpu),
            latency_us: Latency {
                p99: 100,
                ..Latency::default()
            },
            ..RunReport::default()
        };
        let runs = [
            run("base", 100.0, 1.0),
            run("base", 300.0, 1.0),
            run("base", 200.0, 1.0),
            run("zinx", 270.0, 1.2),
            run("zinx", 90.0, 1.9),
        ];
        let text = render_tables(&runs, "zinx", "base");
        assert!(text.contains("| s | base | 300 |"), "{text}");
        // Rounds pair in order: 270/100 and 90/300 replies/s, 1.2/1.0 and 1.9/1.0
        // CPU (the third baseline is unpaired).
        assert!(
            text.contains(
                "| s | 0.90 | 1.20 | 1.00 | 1.50 (0.30–2.70) | 1.55 (1.20–1.90) | 1.00 (1.00–1.00) |"
            ),
            "{text}"
        );
    }
}
