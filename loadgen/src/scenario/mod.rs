//! One module per scenario, each over the shared core (`run`, `deliver`, `report`).

pub(crate) mod churn;
pub(crate) mod echo;
pub(crate) mod fanout;
pub(crate) mod hold;
pub(crate) mod overload;
pub(crate) mod push;
pub(crate) mod resume;
pub(crate) mod rpc;
