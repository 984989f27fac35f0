//! osk's builder library. The `osk` binary is a thin CLI over these modules.

pub mod arch;
pub mod assemble;
pub mod build;
pub mod civil;
pub mod image;
pub mod initramfs;
pub mod manifest;
pub mod pkg;
pub mod pull;
pub mod reference;
pub mod run;
pub mod spec;
pub mod store;
pub mod untrusted;
