//! containerd: its gRPC client, the daemon and its restart loop, the shim front and the sealed runc.

pub mod client;
pub mod daemon;
pub mod sealedrunc;
pub mod shimstart;
