//! osk-init: PID 1. See init/README.md. Run as `modprobe` (the kernel's
//! helper links to this binary), it loads a module and exits.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if called == "modprobe" && std::process::id() != 1 {
        std::process::exit(osk_init::kmod::modprobe::main(&args[1..]));
    }
    osk_init::boot::main()
}
