//! SIGINT and SIGTERM during a build: remove its temporaries, then exit 128+N.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Watches for SIGINT/SIGTERM on a thread of its own (the handler itself
/// only wakes that thread), which removes the outputs being written and
/// exits with 130 or 143 as a shell would report the signal.
pub fn clean_up_on_signals() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _held = osk_builder::build::remove_temporaries();
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}
