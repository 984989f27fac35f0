//! osk's builder library. The `osk` binary is a thin CLI over these modules.

pub mod pkg;
pub mod reference;
pub mod store;
