//! ringcast: a WebSocket push gateway. One thread per core, each with its own monoio runtime,
//! listener, connection slab and timer wheel.
//!
//! - [`proto`]: the WebSocket protocol, sans-IO.
//! - [`timer_wheel`]: the per-shard timer wheel.
//! - [`server`]: listeners, shards, connections.
//! - [`config`]: every limit and deadline.
//! - [`push`]: users, channels, directories and delivery.
//! - [`api`]: the HTTP API backends use.
//! - [`cluster`]: what nodes must agree on (the stable home slot of a name).

#![deny(unsafe_code)] // reason: unsafe lives in server::sys alone, each block argued

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod proto;
pub mod push;
pub mod server;
pub mod timer_wheel;
