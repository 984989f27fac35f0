//! `osk build a.yml b.yml ...`: later files extend and override earlier ones.
//!
//! Unlike LinuxKit, an entry whose name matches an earlier one in the same
//! section replaces it in place, so an overlay file can retune one service
//! without repeating the whole manifest.

use std::collections::BTreeSet;

use super::model::{ContainerKind, ImageEntry, Manifest};

/// A later file's entries named N replace every earlier entry named N, at
/// the first one's position and in the later file's order; entries with a
/// new name are appended in order. (onboot/onshutdown may repeat a name
/// within one file; services cannot.)
fn replace_by_name(old: Vec<ImageEntry>, new: Vec<ImageEntry>) -> Vec<ImageEntry> {
    let old_names: BTreeSet<String> = old.iter().map(|e| e.name.clone()).collect();
    let new_names: BTreeSet<String> = new.iter().map(|e| e.name.clone()).collect();
    let (mut replacing, appended): (Vec<_>, Vec<_>) =
        new.into_iter().partition(|e| old_names.contains(&e.name));
    let mut out = Vec::with_capacity(old.len() + appended.len());
    for e in old {
        if !new_names.contains(&e.name) {
            out.push(e);
        } else if !out.iter().any(|x: &ImageEntry| x.name == e.name) {
            let (group, rest) = replacing.into_iter().partition(|x| x.name == e.name);
            replacing = rest;
            out.extend::<Vec<_>>(group);
        }
    }
    out.extend(appended);
    out
}

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
        *section = replace_by_name(std::mem::take(section), entries);
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
