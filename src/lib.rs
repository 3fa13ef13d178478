pub mod proto;
pub mod timer_wheel;
