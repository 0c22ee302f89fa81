//! Zinx's own frame format, at the path it has always had: the two packet layouts
//! ([`Layout`]), their [`Codec`] (the framing every connection's reader decodes
//! with and its senders encode with, unless the server or client is given another)
//! and [`HEADER_LEN`]. The code lives with the other framings in
//! [`framing`](crate::framing), whose documentation draws both layouts.

pub use crate::framing::zinx::{Codec, HEADER_LEN, Layout};
