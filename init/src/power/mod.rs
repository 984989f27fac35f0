//! Power: the signals and the ACPI button that ask for it, and the shutdown sequence.

pub mod button;
pub mod shutdown;
pub mod signals;
