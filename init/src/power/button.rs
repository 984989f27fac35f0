//! The ACPI power button. Debian's kernel has the ACPI button driver as a
//! module (`button`); it reports presses as KEY_POWER on an input device,
//! read here through evdev (module `evdev`). Both must be loaded.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::sys::PowerAction;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// True when a raw `struct input_event` (24 bytes on 64-bit) is a KEY_POWER press.
pub fn is_power_press(ev: &[u8]) -> bool {
    ev.len() >= 24
        && u16::from_ne_bytes([ev[16], ev[17]]) == EV_KEY
        && u16::from_ne_bytes([ev[18], ev[19]]) == KEY_POWER
        && i32::from_ne_bytes(ev[20..24].try_into().unwrap_or_default()) == 1
}

/// Watches every evdev device for KEY_POWER, including the ones devtmpfs
/// creates after this call: the nodes of just-loaded modules appear
/// asynchronously, and racing them would leave the button deaf.
pub fn watch(power: mpsc::UnboundedSender<PowerAction>) {
    tokio::spawn(async move {
        let mut opened = HashSet::new();
        let notify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("inotify: {e}; only input devices present now are watched");
                scan(&power, &mut opened);
                return;
            }
        };
        // /dev/input itself appears with the first input device.
        let _ = notify.add_watch("/dev", AddWatchFlags::IN_CREATE);
        let _ = notify.add_watch(INPUT_DIR, AddWatchFlags::IN_CREATE);
        scan(&power, &mut opened);
        // SAFETY: the AsyncFd owns the inotify instance; nothing else
        // closes its descriptor while it is registered.
        let Ok(fd) = (unsafe { AsyncFd::register(Notify(notify)) }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match fd.get_ref().0.read_events() {
                Ok(_) => {
                    let _ = fd
                        .get_ref()
                        .0
                        .add_watch(INPUT_DIR, AddWatchFlags::IN_CREATE);
                    scan(&power, &mut opened);
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!("inotify on {INPUT_DIR}: {e}");
                    return;
                }
            }
        }
    });
}

const INPUT_DIR: &str = "/dev/input";

/// nix's Inotify has AsFd only; tokio's AsyncFd wants AsRawFd.
struct Notify(Inotify);

impl AsRawFd for Notify {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Starts a reader for every `/dev/input/event*` not yet opened.
fn scan(power: &mpsc::UnboundedSender<PowerAction>, opened: &mut HashSet<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(INPUT_DIR) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let path = e.path();
        if opened.contains(&path) {
            continue;
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) => continue,
        };
        opened.insert(path.clone());
        let power = power.clone();
        tokio::spawn(read_keys(file, path, power));
    }
}

async fn read_keys(file: std::fs::File, path: PathBuf, power: mpsc::UnboundedSender<PowerAction>) {
    // SAFETY: the AsyncFd owns the file; nothing else closes its descriptor.
    let Ok(fd) = (unsafe { AsyncFd::register(file) }) else {
        return;
    };
    let mut buf = [0u8; 24 * 16];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        // SAFETY: reading into a buffer we own, of the length passed.
        let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return;
        }
        if buf[..n as usize].chunks(24).any(is_power_press) {
            tracing::info!("power button pressed ({})", path.display());
            let _ = power.send(PowerAction::PowerOff);
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_key_power_press_only() {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "release is not a press");
    }
}
