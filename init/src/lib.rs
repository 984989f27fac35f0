//! osk-init: PID 1 for osk machines.
//!
//! The binary (`src/bin/osk-init.rs`) only calls [`boot::main`]. Privileged
//! calls go through [`sys::Sys`] (or a leaf's own trait, listed there), so
//! the boot plan, switchroot, bundle host actions, volumes, module ordering,
//! restart back-off and shutdown sequence are unit-tested without root.
//!
//! One folder per concern: [`boot`] (the sequence), [`sys`] (the seam),
//! [`kmod`], [`containerd`], [`service`] (supervision), [`bundle`] (onboot
//! and runtime.json host actions), [`net`], [`power`], [`log`], [`metadata`],
//! and the helpers' libraries ([`sockfwd`], [`binfmt`], [`timesync`]);
//! every guest path init owns is in [`paths`].

pub mod binfmt;
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
pub mod sockfwd;
pub mod sys;
pub mod timesync;
