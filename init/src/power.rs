//! The ACPI power button. Debian's kernel has the ACPI button driver as a
//! module (`button`); it reports presses as KEY_POWER on an input device,
//! read here through evdev (module `evdev`). Both must be loaded.

use std::os::fd::AsRawFd;

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

/// Watches every /dev/input/event* for a power button press.
pub fn watch(power: mpsc::UnboundedSender<PowerAction>) {
    let Ok(rd) = std::fs::read_dir("/dev/input") else {
        tracing::debug!(
            "no /dev/input: the power button will not work (load modules button and evdev)"
        );
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let path = e.path();
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(_) => continue,
        };
        let power = power.clone();
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the File, so the fd stays open and the
            // same for the AsyncFd's whole life.
            let Ok(fd) = (unsafe { AsyncFd::register(file) }) else {
                return;
            };
            let mut buf = [0u8; 24 * 16];
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    return;
                };
                // SAFETY: buf is valid for its length; the fd is open.
                let n = unsafe {
                    libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
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
        });
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
