//! Power: the ACPI power button and the final shutdown sequence.

pub mod button;
pub mod shutdown;
