//! Messages: what the codec produces from the wire and what handlers send.
//!
//! A Zinx message is a 32-bit message ID and a payload. The payload is a
//! [`Bytes`], sliced out of the connection's read buffer without a copy.

use std::fmt;

use bytes::Bytes;

/// A Zinx message ID (the `msgID` of the wire header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId(pub u32);

impl From<u32> for MsgId {
    fn from(id: u32) -> Self {
        MsgId(id)
    }
}

impl From<MsgId> for u32 {
    fn from(id: MsgId) -> Self {
        id.0
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection ID, unique within one server for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One framed message: an ID and its data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The message ID, used for routing.
    pub id: MsgId,
    /// The payload (may be empty).
    pub data: Bytes,
}

impl Message {
    /// Builds a message from anything that converts into an ID and a payload.
    ///
    /// # Examples
    ///
    /// ```
    /// let msg = zinx::Message::new(1, "ping");
    /// assert_eq!(msg.id.0, 1);
    /// assert_eq!(&msg.data[..], b"ping");
    /// ```
    pub fn new(id: impl Into<MsgId>, data: impl Into<Bytes>) -> Self {
        Message {
            id: id.into(),
            data: data.into(),
        }
    }
}
