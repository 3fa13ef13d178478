//! Delivery: who is connected where, who subscribes to what, and the messages shards exchange.
//!
//! Every user and every channel, and the broadcast stream, has a *home shard*
//! ([`ids::home_of`]). The home shard owns the stream's numbering ([`streams`]) and its directory (a user's connections, or how many
//! subscribers each shard holds for a channel). A push to a user goes API → home → the
//! shard(s) holding its connections; a channel publish goes API → home → each shard with
//! subscribers, encoded once at the home shard and shared by reference. Nothing here takes a
//! lock shared across cores: each structure is owned by one shard.

pub(crate) mod call;
pub mod delivery;
pub(crate) mod directory;
pub(crate) mod effect;
pub(crate) mod history;
pub(crate) mod home;
pub mod ids;
pub mod index;
pub(crate) mod journal;
pub(crate) mod mailbox;
pub mod msg;
pub(crate) mod repair;
pub mod report;
pub(crate) mod session;
pub(crate) mod streams;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub(crate) mod token;
