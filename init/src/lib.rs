//! osk-init: PID 1 for osk machines.
//!
//! The binary (`src/bin/osk-init.rs`) only calls [`boot::main`]. Privileged
//! operations go through [`sys::Sys`] so the boot plan, module ordering,
//! restart back-off and shutdown sequence are unit-tested without root.

pub mod boot;
pub mod bundle;
pub mod containerd;
pub mod control;
pub mod kmod;
pub mod log;
pub mod metadata;
pub mod net;
pub mod paths;
pub mod power;
pub mod reaper;
pub mod service;
pub mod sys;
