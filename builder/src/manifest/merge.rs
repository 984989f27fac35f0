//! `osk build a.yml b.yml ...`: later files extend and override earlier ones.
//!
//! Unlike LinuxKit, an entry whose name matches an earlier one in the same
//! section replaces it in place, so an overlay file can retune one service
//! without repeating the whole manifest.

use super::model::{ContainerKind, Manifest};

pub(crate) fn merge(into: &mut Manifest, next: Manifest) {
    let Manifest {
        kernel,
        init,
        onboot,
        onshutdown,
        services,
        files,
        volumes,
    } = next;

    let k = &mut into.kernel;
    if kernel.image.is_some() {
        k.image = kernel.image;
    }
    if kernel.cmdline.is_some() {
        k.cmdline = kernel.cmdline;
    }
    if kernel.binary.is_some() {
        k.binary = kernel.binary;
    }
    if kernel.tar.is_some() {
        k.tar = kernel.tar;
    }
    if kernel.ucode.is_some() {
        k.ucode = kernel.ucode;
    }

    for r in init {
        if !into.init.iter().any(|x| x.source == r.source) {
            into.init.push(r);
        }
    }

    for (kind, entries) in [
        (ContainerKind::Onboot, onboot),
        (ContainerKind::Onshutdown, onshutdown),
        (ContainerKind::Service, services),
    ] {
        let section = into.section_mut(kind);
        for e in entries {
            match section.iter_mut().find(|x| x.name == e.name) {
                Some(slot) => *slot = e,
                None => section.push(e),
            }
        }
    }

    for f in files {
        match into.files.iter_mut().find(|x| x.key() == f.key()) {
            Some(slot) => *slot = f,
            None => into.files.push(f),
        }
    }

    for v in volumes {
        match into.volumes.iter_mut().find(|x| x.name == v.name) {
            Some(slot) => *slot = v,
            None => into.volumes.push(v),
        }
    }
}
