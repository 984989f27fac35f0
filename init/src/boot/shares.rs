//! Host folders from `osk run qemu --share`: each virtio-9p or virtiofs tag
//! is mounted where the table QEMU hands over in fw_cfg says (see
//! `osk_layout::share`). Runs after modules are loaded (virtio-9p,
//! virtiofs and fw_cfg load by modalias) and before onboot, so every
//! container can bind a shared folder.

use osk_layout::share::{self, Fs, Share};

use crate::sys::{MsFlags, Sys};

/// 9p options: the virtio transport, Linux semantics, and 256 KiB messages
/// (the default 8 KiB makes large reads crawl).
const OPTIONS_9P: &str = "trans=virtio,version=9p2000.L,msize=262144";

/// Mounts the shares in `table` (the fw_cfg file's content, if there is
/// one). Returns how many were mounted; each failure is logged, naming the
/// share, and does not stop the others or the boot.
pub fn mount_all(sys: &dyn Sys, table: Option<&str>) -> usize {
    let Some(text) = table else { return 0 };
    let shares = match share::parse(text) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("not mounting any shared folder: {e}");
            return 0;
        }
    };
    shares.iter().filter(|s| mount_one(sys, s)).count()
}

fn mount_one(sys: &dyn Sys, s: &Share) -> bool {
    // Host files are data: no device nodes, no setuid from the host.
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if s.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    // virtiofs takes no options: the tag names the device.
    let options = match s.fs {
        Fs::NineP => Some(OPTIONS_9P),
        Fs::Virtiofs => None,
    };
    let fstype = s.fs.fstype();
    let result = sys
        .mkdir_p(&s.path)
        .and_then(|()| sys.mount(&s.tag, &s.path, Some(fstype), flags, options));
    match result {
        Ok(()) => {
            tracing::info!("shared folder {} ({fstype}) mounted on {}", s.tag, s.path);
            true
        }
        Err(e) => {
            tracing::error!(
                "mounting shared folder {} ({fstype}) on {}: {e}",
                s.tag,
                s.path
            );
            false
        }
    }
}

/// The table QEMU handed over, if `osk run` shared anything.
pub fn read_table() -> Option<String> {
    std::fs::read_to_string(share::FW_CFG_RAW).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    #[test]
    fn mounts_each_share_where_the_table_says() {
        let sys = Recorder::default();
        let n = mount_all(
            &sys,
            Some("osk0\trw\t/home/me/My src\nosk1\tro\t/data\nosk2\trw,virtiofs\t/fast\n"),
        );
        assert_eq!(n, 3);
        assert_eq!(
            sys.calls(),
            [
                "mkdir /home/me/My src",
                "mount osk0 /home/me/My src 9p MS_NOSUID|MS_NODEV trans=virtio,version=9p2000.L,msize=262144",
                "mkdir /data",
                "mount osk1 /data 9p MS_RDONLY|MS_NOSUID|MS_NODEV trans=virtio,version=9p2000.L,msize=262144",
                "mkdir /fast",
                "mount osk2 /fast virtiofs MS_NOSUID|MS_NODEV -",
            ]
        );
    }

    #[test]
    fn one_failed_share_does_not_stop_the_next() {
        let sys = Recorder::default();
        sys.fail("mount osk0", libc::ENOENT);
        assert_eq!(mount_all(&sys, Some("osk0\trw\t/a\nosk1\trw\t/b\n")), 1);
        assert_eq!(sys.calls_starting("mount osk1").len(), 1);
        // A directory that cannot be made is not mounted on.
        let sys = Recorder::default();
        sys.fail("mkdir /a", libc::EROFS);
        assert_eq!(mount_all(&sys, Some("osk0\trw\t/a\n")), 0);
        assert!(sys.calls_starting("mount").is_empty());
    }

    #[test]
    fn no_table_or_a_bad_one_mounts_nothing() {
        let sys = Recorder::default();
        assert_eq!(mount_all(&sys, None), 0);
        assert_eq!(
            mount_all(&sys, Some("osk0\trw\t/ok\nosk1\trw\t../escape\n")),
            0
        );
        assert!(sys.calls().is_empty());
    }
}
