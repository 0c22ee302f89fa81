//! # Zinx for Rust
//!
//! A lightweight concurrent server framework for long-lived TCP connections (game
//! servers, IoT gateways, message forwarding), wire-compatible with Go
//! [Zinx](https://github.com/aceld/zinx): a Go Zinx client works against a `zinx`
//! server and the other way round, in both packet layouts.
//!
//! ```no_run
//! use zinx::{Config, Request, Router, Server};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), zinx::Error> {
//!     let router = Router::new().route(1, |req: Request| async move {
//!         // Echo: handlers never touch the socket, they queue for the writer.
//!         req.conn().send(req.msg_id(), req.data()).await
//!     });
//!     let server = Server::builder(Config::load()?).router(router).build();
//!     server
//!         .serve(async { let _ = tokio::signal::ctrl_c().await; })
//!         .await
//! }
//! ```
//!
//! ## The data path, module by module
//!
//! ```text
//! server / client   accept (transport: listener, open step) or dial (connector);
//!                   one task per connection (engine: Engine::setup, Engine::run)
//!  -> engine::reader read -> Framing -> Message, a batch per read (+ heartbeat, timeouts)
//!  -> worker         a permit (Hash) or none (Task, the default; Bind / DynamicBind / 0)
//!  -> router         interceptors -> message ID -> middleware -> handler (a Request)
//!  -> Connection::send / try_send   encode into the bounded send queue (conn::outgoing)
//!  -> conn::writer   polled by the same task: take all queued bytes -> one write, flush
//! side: manager (registry, rooms, notify, state), hooks, Timers, Connection::async_op,
//!       config, observe (metrics)
//! ```
//!
//! - [`config`]: zinx.json as a value.
//! - [`framing`]: the `Framing` trait, Zinx's TLV / LTV layouts (also [`codec`]),
//!   length-field, delimiter and HTLV+CRC framings, and any tokio-util codec with a
//!   frame mapper (`MappedCodec`); lengths checked before allocating.
//! - [`transport`]: listeners, the open step, connectors (TCP; TLS with the `tls`
//!   feature; KCP over UDP with the `kcp` feature).
//! - [`server`]: one core, any number of listeners, `MaxConn`, graceful shutdown.
//! - [`client`]: one connection to a Zinx server, reconnect, request/response.
//! - `engine`: a connection's life from set-up to clean-up, and its reader.
//! - `conn`: the [`Connection`] handle, its send queue and its writer.
//! - `worker`: where handlers run.
//! - [`router`]: routes by message ID.
//! - [`manager`]: the live connections.
//! - `hooks`: `on_connect` / `on_disconnect`.
//! - [`Heartbeat`], [`Timers`], [`Connection::async_op`]: keep-alive, timers, blocking work.

// No unwrap or expect on anything a peer or a file can influence.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod codec;
pub mod config;
mod conn;
mod engine;
mod error;
mod extensions;
mod faults;
pub mod framing;
mod heartbeat;
mod hooks;
mod limit;
pub mod manager;
mod message;
#[cfg(feature = "metrics")]
mod metrics;

/// The `prometheus-client` this crate was built with (feature `metrics`), for
/// [`Server::register_metrics`].
#[cfg(feature = "metrics")]
pub use prometheus_client;
mod observe;
mod queue;
mod request;
pub mod router;
pub mod server;
mod timer;
pub mod transport;
mod util;
mod worker;

pub use client::{Client, ClientBuilder, Messages, Reconnect};
pub use codec::{Codec, Layout};
pub use config::{Config, SendQueueFull, WorkerMode};
pub use conn::{Connection, Outbox};
pub use error::{Error, Result};
pub use extensions::Extensions;
pub use framing::Framing;
pub use heartbeat::{DEFAULT_HEARTBEAT_ID, Heartbeat};
pub use manager::{ConnManager, Delivery, UserId};
pub use message::{ConnId, Message, MsgId, Payload};
pub use request::Request;
pub use router::{Dispatcher, HandlerOutput, Middleware, Next, Router, ZinxRouter};
pub use server::{Server, ServerBuilder, ServerHandle};
pub use timer::{TimerHandle, Timers};

/// The README's code compiles: it is run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
