//! Container bundles on the host side: loading, runtime.json host actions, onboot runs, volumes.

pub mod onboot;
pub mod prepare;
pub mod volumes;
