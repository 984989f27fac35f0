//! `osk.shell`: a root shell on the first console, for debugging.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::containerd::daemon;
use crate::{reaper, sys};

/// `osk.shell`: /bin/sh on the first console, respawned when it exits.
pub async fn run(console: String) {
    if !Path::new("/bin/sh").exists() {
        tracing::warn!("osk.shell: no /bin/sh in the init image; no debug shell");
        return;
    }
    loop {
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&console)
        else {
            tracing::warn!("osk.shell: cannot open {console}");
            return;
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.env("PATH", daemon::PATH)
            .env("HOME", "/")
            .env("TERM", "linux")
            .stdin(Stdio::from(tty.try_clone().expect("dup tty")))
            .stdout(Stdio::from(tty.try_clone().expect("dup tty")))
            .stderr(Stdio::from(tty));
        sys::set_controlling_tty(&mut cmd);
        match reaper::spawn(&mut cmd) {
            Ok(c) => {
                drop(cmd);
                let _ = c.exit.await;
            }
            Err(e) => {
                tracing::warn!("osk.shell: {e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
