//! What every node of a future cluster must agree on. Today that is only where a name lives
//! ([`slot`]); the Redis broker arrives with the cluster issue.

pub(crate) mod slot;
