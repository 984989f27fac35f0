//! osk-shim-start: containerd's runc shim `start`, without a Go start-up.
//! See `osk_init::containerd::shimstart`.

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    std::process::exit(osk_init::containerd::shimstart::main(args));
}
