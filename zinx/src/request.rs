//! Requests: one decoded message plus the connection it arrived on.
//!
//! The reader builds a [`Request`] per inbound message and hands it to the router
//! (directly, or through a worker's queue). Handlers own it: the payload is a
//! `Bytes` slice of the read buffer, so keeping it is cheap. Extensions cost
//! nothing until the first value is stored.

use bytes::Bytes;

use crate::conn::Connection;
use crate::extensions::Extensions;
use crate::message::{Message, MsgId};

/// One inbound message and its connection (Zinx's `IRequest`), plus typed
/// per-request values that interceptors and middleware pass down the chain.
#[derive(Debug)]
pub struct Request {
    conn: Connection,
    msg: Message,
    extensions: Extensions,
}

impl Request {
    /// Pairs a message with the connection it came from.
    #[must_use]
    #[inline]
    pub fn new(conn: Connection, msg: Message) -> Self {
        Request {
            conn,
            msg,
            extensions: Extensions::new(),
        }
    }

    /// The connection the message arrived on.
    #[must_use]
    #[inline]
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The message ID.
    #[must_use]
    #[inline]
    pub fn msg_id(&self) -> MsgId {
        self.msg.id
    }

    /// The message data.
    #[must_use]
    #[inline]
    pub fn data(&self) -> &Bytes {
        &self.msg.data
    }

    /// The whole message.
    #[must_use]
    #[inline]
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// The message, mutably: an interceptor may rewrite the ID (routing happens
    /// after interceptors) or the data.
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.msg
    }

    /// Values stored along the chain (Zinx's request `Set` / `Get`).
    #[must_use]
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Values stored along the chain, mutably.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Splits the request into its connection and message.
    #[must_use]
    #[inline]
    pub fn into_parts(self) -> (Connection, Message) {
        (self.conn, self.msg)
    }
}
