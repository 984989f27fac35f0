//! Kernel modules: the module index, device aliases, loading, the modprobe helper and uevents.

pub mod modalias;
pub mod modprobe;
pub mod modules;
pub mod uevent;
