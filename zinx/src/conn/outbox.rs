//! A connection with no socket behind it, for tests of handlers and for
//! benchmarks: what is sent on it is decoded into an [`Outbox`].

use std::collections::VecDeque;
use std::fmt;

use bytes::BytesMut;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::codec::Decoder;

use crate::codec::{Codec, Layout};
use crate::conn::outgoing::Receiver;
use crate::message::Message;

/// What is sent on a [`Connection::detached`](crate::Connection::detached) connection: the messages, in the
/// order they were sent. Dropping it closes the connection's send queue, so later
/// sends fail with [`Error::Closed`](crate::Error::Closed).
pub struct Outbox {
    rx: Receiver,
    /// Bytes taken from the queue, decoded into `messages` as they come.
    wire: BytesMut,
    messages: VecDeque<Message>,
}

impl Outbox {
    pub(super) fn new(rx: Receiver) -> Self {
        Outbox {
            rx,
            wire: BytesMut::new(),
            messages: VecDeque::new(),
        }
    }

    /// The framing of detached connections: Zinx's TLV with no size limit.
    pub(super) fn codec() -> Codec {
        Codec::new(Layout::Tlv, 0)
    }

    /// The next message sent, waiting for one; `None` once the connection's
    /// queue is closed and empty.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.try_recv() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.rx.queue().readable().await,
            }
        }
    }

    /// The next message sent, without waiting.
    ///
    /// # Errors
    ///
    /// `Empty` when nothing is queued, `Disconnected` once closed and empty.
    pub fn try_recv(&mut self) -> Result<Message, TryRecvError> {
        if self.messages.is_empty() {
            self.rx.queue().take(|out| out.take_bytes(&mut self.wire));
            let mut codec = Outbox::codec();
            loop {
                match codec.decode(&mut self.wire) {
                    Ok(Some(msg)) => self.messages.push_back(msg),
                    Ok(None) => break,
                    // What the codec encoded it decodes: an error here is a bug.
                    Err(e) => {
                        tracing::error!(error = %e, "detached connection's frames do not decode");
                        break;
                    }
                }
            }
        }
        match self.messages.pop_front() {
            Some(msg) => Ok(msg),
            None if self.rx.queue().is_closed() => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl From<Outbox> for Receiver {
    fn from(outbox: Outbox) -> Receiver {
        outbox.rx
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}
