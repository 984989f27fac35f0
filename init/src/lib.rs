//! osk-init: PID 1 for osk machines.
