//! init's own log: every line goes to every console and to `/var/log/init.log`
//! (once /var is mounted). Boot markers go through here too, unformatted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

use osk_layout::marker::{self, Event};

use crate::log::rotating::{RotatingLog, DEFAULT_CAP};

struct Outputs {
    /// Each console with the path it was opened from (`None`: stderr).
    consoles: Vec<(Option<String>, File)>,
    file: Option<RotatingLog>,
}

static OUT: Mutex<Outputs> = Mutex::new(Outputs {
    consoles: Vec::new(),
    file: None,
});

fn open_console(path: &str) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags_noctty()
        .open(path)
        .ok()
}

/// Writes to every console. A console whose tty was hung up (a login
/// session on it ended: writes fail with EIO) is reopened once, so init's
/// shutdown lines and markers still reach it.
fn to_consoles(consoles: &mut [(Option<String>, File)], data: &[u8]) {
    for (path, file) in consoles {
        let Err(e) = file.write_all(data) else {
            continue;
        };
        if e.raw_os_error() != Some(libc::EIO) {
            continue;
        }
        if let Some(f) = path.as_deref().and_then(open_console) {
            *file = f;
            let _ = file.write_all(data);
        }
    }
}

fn outputs() -> std::sync::MutexGuard<'static, Outputs> {
    // A panic while logging must not silence PID 1 for good.
    OUT.lock().unwrap_or_else(|e| e.into_inner())
}

/// (Re)opens the consoles to log to. Unopenable ones are skipped; with none,
/// stderr (the kernel's console for PID 1) is used.
pub fn set_consoles(paths: &[String]) {
    let mut files: Vec<(Option<String>, File)> = paths
        .iter()
        .filter_map(|p| Some((Some(p.clone()), open_console(p)?)))
        .collect();
    if files.is_empty() {
        if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
            files.push((None, File::from(fd)));
        }
    }
    outputs().consoles = files;
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}
impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // PID 1 must not acquire a controlling terminal: ^C would SIGINT it.
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Starts copying the log into `path` (called once /var/log exists).
pub fn set_file(path: &str) {
    if let Ok(f) = RotatingLog::open(path, DEFAULT_CAP) {
        outputs().file = Some(f);
    }
}

/// Writes raw bytes to every console and the log file.
pub fn write_raw(data: &[u8]) {
    let mut out = outputs();
    to_consoles(&mut out.consoles, data);
    if let Some(f) = out.file.as_mut() {
        let _ = f.write_all(data);
    }
}

/// Writes to the consoles only (for output already logged elsewhere).
pub fn write_console(data: &[u8]) {
    let mut out = outputs();
    to_consoles(&mut out.consoles, data);
}

/// Prints a boot marker line with the current uptime.
pub fn mark(event: Event) {
    let line = format!("{}\n", marker::format(crate::sys::uptime(), &event));
    write_raw(line.as_bytes());
}

/// `tracing` writer that forwards to [`write_raw`].
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_raw(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stamps init's log lines with the uptime, as the kernel stamps its own,
/// so the two read as one timeline.
struct Uptime;

impl tracing_subscriber::fmt::time::FormatTime for Uptime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&stamp())
    }
}

/// The uptime as the kernel prints it: `[   4.512]`.
pub fn stamp() -> String {
    format!("[{:>8.3}]", crate::sys::uptime())
}

/// Installs the `tracing` subscriber: info, and with `osk.debug` init's own
/// debug lines (the gRPC stack's would drown them).
pub fn init_tracing(debug: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("osk_init", level)
        .with_default(tracing::Level::INFO);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(|| Writer)
        .with_ansi(false)
        .with_timer(Uptime)
        .with_target(false)
        .finish()
        .with(filter);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
