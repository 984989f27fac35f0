//! Service supervision: each service's life (dependency order, restart
//! policy with back-off, re-attaching after a containerd restart), its typed
//! state, and the stop order. containerd is reached only through
//! [`runtime::TaskRuntime`] and the machine only through
//! [`host::ServiceHost`], so all of it is unit-tested without a VM.

pub mod backoff;
mod error;
pub mod host;
mod lifecycle;
pub mod runtime;
pub mod state;
pub mod stop;
pub mod supervisor;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use error::Error;
