//! One connection to the server: sending, printing what arrives, and
//! explaining how the connection ended.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use tokio::sync::mpsc;
use tokio::time::Instant;
use zinx::{Client, Codec, Config, Layout, Message, MsgId, Request, Router};

use crate::layout::{self, FailureSlot, Header, Sniffing};
use crate::show::{Direction, message_line};

/// How the client reaches the server. Each transport zinx's client gains is
/// one more variant, one more entry in [`TRANSPORTS`] and one more arm in
/// [`Session::connect`], which sets up everything else the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Plain TCP.
    Tcp,
}

/// The transports of this build, by their command-line name.
const TRANSPORTS: &[(&str, Transport)] = &[("tcp", Transport::Tcp)];

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TRANSPORTS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, transport)| transport)
            .ok_or_else(|| {
                let names: Vec<&str> = TRANSPORTS.iter().map(|&(name, _)| name).collect();
                format!(
                    "unknown transport {s:?}: this build has {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = TRANSPORTS
            .iter()
            .find(|&&(_, t)| t == *self)
            .map_or("?", |&(name, _)| name);
        f.write_str(name)
    }
}

/// Where and how to connect, and how to print.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) addr: String,
    pub(crate) transport: Transport,
    pub(crate) layout: Layout,
    /// The largest data length sent or accepted.
    pub(crate) max_len: u32,
    /// Print whole data, never cut short.
    pub(crate) full: bool,
}

/// How a connection ended before we closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The server closed it (or it broke).
    ByServer,
    /// The client could not decode what the server sent, and closed it.
    Undecodable,
}

/// What the client's handlers tell the session.
enum Event {
    Message(Message),
    Closed,
}

/// Messages from the server waiting to be printed. When the printing falls
/// behind, the client stops reading and TCP slows the server.
const EVENT_QUEUE: usize = 64;

/// A connected client and what has been seen on it.
pub(crate) struct Session {
    client: Client,
    events: mpsc::Receiver<Event>,
    failure: FailureSlot,
    opts: Options,
    received: usize,
    last_sent: Option<Header>,
    last_sent_at: Option<Instant>,
    hinted: bool,
}

impl Session {
    /// Connects. Every message from the server goes to the session through a
    /// fallback route: the client has no routes of its own.
    pub(crate) async fn connect(opts: Options) -> Result<Session, zinx::Error> {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let to_session = tx.clone();
        let router = Router::new().fallback(move |req: Request| {
            let tx = to_session.clone();
            async move {
                // Fails only once the session is gone and nobody is printing.
                let _ = tx.send(Event::Message(req.into_parts().1)).await;
            }
        });
        let failure = FailureSlot::default();
        let framing = Sniffing::new(Codec::new(opts.layout, opts.max_len), failure.clone());
        let config = Config {
            max_packet_size: opts.max_len,
            ..Config::default()
        };
        let builder = Client::builder(opts.addr.clone())
            .config(config)
            .framing(framing)
            .router(router)
            .on_disconnect(move |_| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Event::Closed).await;
                }
            });
        let client = match opts.transport {
            Transport::Tcp => builder.connect().await?,
        };
        Ok(Session {
            client,
            events,
            failure,
            opts,
            received: 0,
            last_sent: None,
            last_sent_at: None,
            hinted: false,
        })
    }

    /// Messages received so far.
    pub(crate) fn received(&self) -> usize {
        self.received
    }

    /// When the last message was sent.
    pub(crate) fn last_sent_at(&self) -> Option<Instant> {
        self.last_sent_at
    }

    /// Sends a message and prints it.
    pub(crate) async fn send(&mut self, id: u32, data: Vec<u8>) -> Result<(), zinx::Error> {
        let line = message_line(Direction::Out, id, &data, self.opts.full);
        let header = Header::of(self.opts.layout, MsgId(id), data.len());
        self.client.send(id, data).await?;
        print_line(&line);
        self.last_sent = header;
        self.last_sent_at = Some(Instant::now());
        Ok(())
    }

    /// Waits for the next message and prints it; returns how the connection
    /// ended once it has. Cancel-safe: nothing is awaited after a message is
    /// taken.
    pub(crate) async fn next(&mut self) -> Option<Ended> {
        let Some(Event::Message(msg)) = self.events.recv().await else {
            return Some(self.explain_end());
        };
        self.received += 1;
        print_line(&message_line(
            Direction::In,
            msg.id.0,
            &msg.data,
            self.opts.full,
        ));
        let hint = Header::of(self.opts.layout, msg.id, msg.data.len())
            .and_then(|h| layout::for_reply(self.opts.layout, h, self.opts.max_len));
        self.hint(hint);
        None
    }

    /// Prints messages until `deadline`, until `expect` messages have arrived in
    /// all, or until the connection ends.
    pub(crate) async fn collect(
        &mut self,
        deadline: Instant,
        expect: Option<usize>,
    ) -> Option<Ended> {
        while expect.is_none_or(|n| self.received < n) {
            tokio::select! {
                ended = self.next() => if ended.is_some() {
                    return ended;
                },
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
        None
    }

    /// Says why the connection ended, with a layout hint when the evidence
    /// points to one.
    fn explain_end(&mut self) -> Ended {
        if let Some(failure) = layout::take_failure(&self.failure) {
            let header = failure
                .header
                .map(|h| format!(" (header {h})"))
                .unwrap_or_default();
            eprintln!(
                "error: cannot decode what the server sent{header}: {}; connection closed",
                failure.error
            );
            let hint = failure
                .header
                .and_then(|h| layout::for_reply(self.opts.layout, h, self.opts.max_len));
            self.hint(hint);
            return Ended::Undecodable;
        }
        if self.received == 0 && self.last_sent.is_some() {
            eprintln!("the server closed the connection without replying");
            let hint = self
                .last_sent
                .and_then(|h| layout::for_silent_close(self.opts.layout, h, self.opts.max_len));
            self.hint(hint);
        } else {
            eprintln!("the server closed the connection");
        }
        Ended::ByServer
    }

    /// Prints a hint, once per session.
    fn hint(&mut self, hint: Option<layout::Hint>) {
        if let Some(hint) = hint
            && !self.hinted
        {
            self.hinted = true;
            eprintln!("{hint}");
        }
    }

    /// Closes the connection, flushing what was sent.
    pub(crate) async fn close(self) {
        // Handlers blocked on a full queue give up once nobody receives, so
        // the client's task can finish.
        drop(self.events);
        self.client.close().await;
    }
}

/// Prints a message line on stdout (diagnostics go to stderr, so stdout holds
/// only the messages). A closed stdout (`| head -1`) is no reason to stop
/// talking to the server, or to panic as `println!` would.
fn print_line(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
