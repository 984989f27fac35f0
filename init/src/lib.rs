//! osk-init: PID 1 for osk machines.
//!
//! The binary (`src/bin/osk-init.rs`) only calls [`boot::main`]. Privileged
//! operations go through [`sys::Sys`] so the boot plan, module ordering,
//! restart back-off and shutdown sequence are unit-tested without root.

pub mod backoff;
pub mod boot;
pub mod cmdline;
pub mod containerd;
pub mod control;
pub mod daemon;
pub mod early;
pub mod logfile;
pub mod logger;
pub mod metadata;
pub mod modalias;
pub mod modprobe;
pub mod modules;
pub mod net;
pub mod onboot;
pub mod power;
pub mod prepare;
pub mod reaper;
pub mod sealedrunc;
pub mod selfstat;
pub mod shimstart;
pub mod shutdown;
pub mod supervisor;
pub mod switchroot;
pub mod sys;
pub mod uevent;
pub mod volumes;
