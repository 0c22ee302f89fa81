//! Messages: what the codec produces from the wire and what handlers send.
//!
//! A Zinx message is a 32-bit message ID and a payload. The payload is a
//! [`Bytes`], sliced out of the connection's read buffer without a copy.

use std::fmt;

use bytes::Bytes;

/// Payloads at least this long are written from their own buffer (a
/// vectored write) instead of being copied next to their header; shorter ones
/// are copied whatever form they come in (see [`Payload`]).
pub(crate) const ZERO_COPY_MIN: usize = 512;

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

/// A hasher for maps keyed by message ID (the router's routes, the metrics'
/// counters): they are looked up for every message, and a `u32` key needs no
/// DoS-resistant hashing (their keys are fixed at start; a peer can only pick
/// among them).
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher;

impl std::hash::BuildHasher for IdHasher {
    type Hasher = IdHash;
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

pub(crate) struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: spreads consecutive IDs over the table.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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

/// What a message can be sent with ([`Connection::send`](crate::Connection::send),
/// [`try_send`](crate::Connection::try_send)): an owned buffer (`Bytes`,
/// `BytesMut`, `Vec<u8>`, `Box<[u8]>`, `String`) or a borrowed one (`&Bytes`,
/// `&[u8]`, `&[u8; N]`, `&Vec<u8>`, `&str`, `&String`).
///
/// Data under 512 bytes is copied into the connection's send buffer next to its
/// header whatever it comes in, so a borrowed payload is the cheapest: nothing
/// is made to hold it (an echo handler sends `req.data()` as it is, with no
/// reference count taken and dropped). Longer data in a `Bytes` (owned or
/// borrowed) is not copied: the buffer is written from where it is; other owned
/// buffers become a `Bytes` without a copy, and other borrowed ones are copied.
///
/// # Examples
///
/// ```
/// let (conn, _outbox) = zinx::Connection::detached(8);
/// conn.try_send(1, b"pong")?;
/// conn.try_send(1, "pong")?;
/// conn.try_send(1, vec![1, 2, 3])?;
/// conn.try_send(1, &bytes::Bytes::from_static(b"pong"))?;
/// # Ok::<(), zinx::Error>(())
/// ```
pub trait Payload: sealed::Sealed {}

/// The methods of [`Payload`], out of users' reach, so the list of payload
/// types can change without breaking anyone.
pub(crate) mod sealed {
    use bytes::Bytes;

    /// What a [`Payload`](super::Payload) is made of.
    pub trait Sealed {
        /// Bytes of data.
        fn len(&self) -> usize;
        /// The bytes to copy into the send buffer, or `None` to queue
        /// [`into_bytes`](Self::into_bytes) as it is (long data that is or
        /// becomes a `Bytes` without a copy).
        fn to_copy(&self) -> Option<&[u8]>;
        /// The data as `Bytes` (copied if borrowed): for long data, and for a
        /// send that waits for room.
        fn into_bytes(self) -> Bytes;
    }
}

/// Owned buffers that become a `Bytes` without a copy.
macro_rules! owned_payload {
    ($($ty:ty),*) => {$(
        impl Payload for $ty {}
        impl sealed::Sealed for $ty {
            #[inline]
            fn len(&self) -> usize {
                <[u8]>::len(self.as_ref())
            }
            #[inline]
            fn to_copy(&self) -> Option<&[u8]> {
                let data: &[u8] = self.as_ref();
                (data.len() < ZERO_COPY_MIN).then_some(data)
            }
            fn into_bytes(self) -> Bytes {
                Bytes::from(self)
            }
        }
    )*};
}

owned_payload!(Bytes, bytes::BytesMut, Vec<u8>, Box<[u8]>, String);

/// Borrowed buffers: copied into the send buffer at any length (a `Bytes` is
/// made only for a send that waits for room).
macro_rules! borrowed_payload {
    ($($ty:ty),*) => {$(
        impl Payload for &$ty {}
        impl sealed::Sealed for &$ty {
            #[inline]
            fn len(&self) -> usize {
                <[u8]>::len(self.as_ref())
            }
            #[inline]
            fn to_copy(&self) -> Option<&[u8]> {
                Some(self.as_ref())
            }
            fn into_bytes(self) -> Bytes {
                Bytes::copy_from_slice(self.as_ref())
            }
        }
    )*};
}

borrowed_payload!([u8], Vec<u8>, str, String, bytes::BytesMut);

impl<const N: usize> Payload for &[u8; N] {}
impl<const N: usize> sealed::Sealed for &[u8; N] {
    #[inline]
    fn len(&self) -> usize {
        N
    }
    #[inline]
    fn to_copy(&self) -> Option<&[u8]> {
        Some(&self[..])
    }
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

/// A borrowed `Bytes`: copied when short, shared (a reference count) when long.
impl Payload for &Bytes {}
impl sealed::Sealed for &Bytes {
    #[inline]
    fn len(&self) -> usize {
        Bytes::len(self)
    }
    #[inline]
    fn to_copy(&self) -> Option<&[u8]> {
        (Bytes::len(self) < ZERO_COPY_MIN).then_some(&self[..])
    }
    fn into_bytes(self) -> Bytes {
        self.clone()
    }
}
