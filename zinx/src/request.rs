//! Requests: one decoded message plus the connection it arrived on.
//!
//! The reader builds a [`Request`] per inbound message and hands it to the router
//! (directly, or through a worker's queue). Handlers own it: the payload is a
//! `Bytes` slice of the read buffer, so keeping it is cheap.

use bytes::Bytes;

use crate::conn::Connection;
use crate::message::{Message, MsgId};

/// One inbound message and its connection (Zinx's `IRequest`).
#[derive(Debug, Clone)]
pub struct Request {
    conn: Connection,
    msg: Message,
}

impl Request {
    /// Pairs a message with the connection it came from.
    #[must_use]
    pub fn new(conn: Connection, msg: Message) -> Self {
        Request { conn, msg }
    }

    /// The connection the message arrived on.
    #[must_use]
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The message ID.
    #[must_use]
    pub fn msg_id(&self) -> MsgId {
        self.msg.id
    }

    /// The message data.
    #[must_use]
    pub fn data(&self) -> &Bytes {
        &self.msg.data
    }

    /// The whole message.
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Splits the request into its connection and message.
    #[must_use]
    pub fn into_parts(self) -> (Connection, Message) {
        (self.conn, self.msg)
    }
}
