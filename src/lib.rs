//! ringcast: a WebSocket push gateway. One thread per core, each with its own monoio runtime,
//! listener, connection slab and timer wheel.
//!
//! - [`proto`]: the WebSocket and client protocols, sans-IO (the `ringcast-proto` crate).
//! - [`timer_wheel`]: the per-shard timer wheel.
//! - [`server`]: listeners, shards, connections.
//! - [`config`]: every limit and deadline.
//! - [`push`]: users, channels, directories and delivery.
//! - [`api`]: the HTTP API backends use.
//! - [`cluster`]: what nodes must agree on (the stable home slot of a name).

#![forbid(unsafe_code)] // reason: unsafe lives in the ringcast-sys crate alone, each block argued

pub use ringcast_proto as proto;

pub mod api;
pub mod auth;
pub mod clock;
pub(crate) mod cluster;
pub mod config;
pub mod push;
pub mod server;
pub mod timer_wheel;
pub mod upstream;
