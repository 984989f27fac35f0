//! osk-init: PID 1. See init/README.md.
fn main() {
    osk_init::boot::main()
}
