//! Test helpers: real OCI images in a real store, layers made with the tar crate.
#![allow(dead_code)]

use std::io::Write;

use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder, MediaType};
use osk_builder::reference::Reference;
use osk_builder::store::{Image, Store};

/// One tar entry; names are written raw so tests can build hostile layers.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    Fifo(&'a str),
}

fn raw_header(kind: tar::EntryType, name: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let n = name.as_bytes();
    assert!(n.len() < 100, "test names must fit the ustar name field");
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            E::Dir(p, m) => (raw_header(tar::EntryType::Directory, p, *m, 0), b""),
            E::File(p, d, m) => (
                raw_header(tar::EntryType::Regular, p, *m, d.len() as u64),
                d,
            ),
            E::Owned(p, d, m, u, g) => {
                let mut h = raw_header(tar::EntryType::Regular, p, *m, d.len() as u64);
                h.set_uid(*u);
                h.set_gid(*g);
                (h, d)
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = raw_header(kind, p, 0o777, 0);
                let t = t.as_bytes();
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                (h, b"")
            }
            E::Char(p, a, c) | E::Block(p, a, c) => {
                let kind = if matches!(e, E::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = raw_header(kind, p, 0o660, 0);
                h.set_device_major(*a).unwrap();
                h.set_device_minor(*c).unwrap();
                (h, b"")
            }
            E::Fifo(p) => (raw_header(tar::EntryType::Fifo, p, 0o600, 0), b""),
        };
        let mut h = h;
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Stores an amd64 image made of `layers` (bytes + media type) under `name`.
pub fn image(store: &Store, name: &str, layers: Vec<(Vec<u8>, MediaType)>) -> Image {
    image_for(store, name, "amd64", layers)
}

/// The same for the architecture `arch`.
pub fn image_for(
    store: &Store,
    name: &str,
    arch: &str,
    layers: Vec<(Vec<u8>, MediaType)>,
) -> Image {
    let descs = layers
        .into_iter()
        .map(|(bytes, media)| store.put_bytes(media, &bytes).unwrap())
        .collect();
    let config = ImageConfigurationBuilder::default()
        .architecture(arch)
        .os("linux")
        .config(ConfigBuilder::default().build().unwrap())
        .build()
        .unwrap();
    let r = Reference::parse(name).unwrap();
    store.write_image(&r, &config, descs).unwrap();
    store.image(&r, "linux", arch).unwrap()
}

/// An image with one plain tar layer.
pub fn simple(store: &Store, name: &str, entries: &[E]) -> Image {
    image(store, name, vec![(layer(entries), MediaType::ImageLayer)])
}

/// Runs a shell pipeline, panicking with its stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `test/kernel:1` (a bzImage stand-in and one module) and `test/init:1`,
/// the two images every bootable test manifest starts from.
pub fn kernel_and_init(store: &Store) {
    let modules = layer(&[E::File("lib/modules/6.1.0/x.ko", b"ko", 0o644)]);
    simple(
        store,
        "test/kernel:1",
        &[
            E::File("kernel", b"bzImage", 0o644),
            E::File("kernel.tar", &modules, 0o644),
        ],
    );
    simple(store, "test/init:1", &[E::File("init", b"#!init", 0o755)]);
}
