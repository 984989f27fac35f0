//! Service supervision: restart policy and back-off, dependency order, stop order.

pub mod backoff;
pub mod stop;
pub mod supervisor;
