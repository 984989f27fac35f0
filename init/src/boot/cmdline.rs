//! The kernel command line switches osk-init reads.

use std::time::Duration;

/// What `/proc/cmdline` asks of osk-init.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cmdline {
    /// Device paths of every `console=` (e.g. `/dev/ttyS0`), in order.
    pub consoles: Vec<String>,
    /// `osk.debug`: verbose init log.
    pub debug: bool,
    /// `osk.shell`: a debug shell on the console.
    pub shell: bool,
    /// `osk.onboot_timeout=SECS`: overrides every onboot container's timeout.
    pub onboot_timeout: Option<Duration>,
    /// `loglevel=`, `quiet`, `debug` or `ignore_loglevel` given: the kernel's
    /// console log level is the user's choice, init leaves it alone.
    pub kernel_loglevel_set: bool,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "console" => {
                    // `ttyS0,115200n8` -> /dev/ttyS0
                    let dev = value.split(',').next().unwrap_or_default();
                    if !dev.is_empty() {
                        let path = format!("/dev/{dev}");
                        if !c.consoles.contains(&path) {
                            c.consoles.push(path);
                        }
                    }
                }
                "loglevel" | "quiet" | "debug" | "ignore_loglevel" => c.kernel_loglevel_set = true,
                "osk.debug" => c.debug = value != "0",
                "osk.shell" => c.shell = value != "0",
                "osk.onboot_timeout" => {
                    c.onboot_timeout = value.parse().ok().map(Duration::from_secs)
                }
                _ => {}
            }
        }
        c
    }

    /// Reads `/proc/cmdline` (empty when unreadable).
    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    /// The kernel console log level init sets at start, if any: warnings and
    /// worse (`KERN_WARNING` is 4; the console prints levels below this).
    /// Info messages from module loading would otherwise land in the middle
    /// of init's lines (printk does not wait for a tty write to finish) and
    /// cost serial output on every boot; they stay in `dmesg`.
    pub fn console_loglevel(&self) -> Option<i32> {
        (!self.kernel_loglevel_set && !self.debug).then_some(5)
    }

    /// Consoles to log to: the `console=` ones, or `/dev/console`.
    pub fn console_paths(&self) -> Vec<String> {
        if self.consoles.is_empty() {
            vec!["/dev/console".into()]
        } else {
            self.consoles.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_switches_and_consoles() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=x console=tty0 console=ttyS0,115200n8 console=ttyS0 osk.debug osk.onboot_timeout=7 quiet",
        );
        assert_eq!(c.consoles, ["/dev/tty0", "/dev/ttyS0"]);
        assert!(c.debug);
        assert!(!c.shell);
        assert_eq!(c.onboot_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn defaults_to_dev_console() {
        let c = Cmdline::parse("quiet osk.shell");
        assert_eq!(c.console_loglevel(), None, "quiet is the user's choice");
        assert_eq!(Cmdline::parse("console=ttyS0").console_loglevel(), Some(5));
        assert_eq!(Cmdline::parse("loglevel=7").console_loglevel(), None);
        assert_eq!(Cmdline::parse("osk.debug").console_loglevel(), None);
        assert!(c.shell);
        assert_eq!(c.console_paths(), ["/dev/console"]);
    }
}
