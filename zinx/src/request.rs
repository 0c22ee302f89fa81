//! Requests: one decoded message plus the connection it arrived on.
//!
//! The dispatcher builds a [`Request`] per inbound message from the reader's handle
//! of the connection. Async handlers own it, synchronous ones (`route_sync`) borrow
//! it: the payload is a `Bytes` slice of the read buffer, so keeping it is cheap. Extensions cost
//! nothing until the first value is stored.

use std::sync::Arc;

use bytes::Bytes;

use crate::conn::Connection;
use crate::extensions::Extensions;
use crate::manager::ConnManager;
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

    /// The application state of type `T` (see
    /// [`Router::with_state`](crate::Router::with_state)).
    ///
    /// # Panics
    ///
    /// If the router was given no state of that type: a programming error, like
    /// a duplicate route. [`try_state`](Self::try_state) returns `None` instead.
    #[must_use]
    pub fn state<T: std::any::Any + Send + Sync>(&self) -> Arc<T> {
        match self.try_state::<T>() {
            Some(state) => state,
            None => panic!(
                "no state of type {} (give it with Router::with_state)",
                std::any::type_name::<T>()
            ),
        }
    }

    /// The application state of type `T`, if there is one.
    #[must_use]
    pub fn try_state<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.conn.state::<T>()
    }

    /// The connection manager of the server (or client) the message came to:
    /// every live connection, rooms, users. A detached connection (see
    /// [`Connection::detached`]) has an empty one of its own.
    #[must_use]
    pub fn manager(&self) -> ConnManager {
        self.conn.manager().unwrap_or_default()
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
