//! osk's builder library. The `osk` binary is a thin CLI over these modules.

pub mod assemble;
pub mod build;
pub mod initramfs;
pub mod manifest;
pub mod reference;
pub mod spec;
pub mod store;
