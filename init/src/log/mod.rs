//! init's logging: the console logger with boot markers, rotating log files, self stats.

pub mod console;
pub mod rotating;
pub mod selfstat;
pub mod sink;

/// The log of a tool that runs as a container (sockfwd, binfmt, timesync):
/// plain lines on stdout, which osk's service log stamps with the time.
pub fn init_tool() {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .init();
}
