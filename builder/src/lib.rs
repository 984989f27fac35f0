//! osk's builder library. The `osk` binary is a thin CLI over these modules.

pub mod reference;
pub mod run;
pub mod store;
