//! `osk build` end to end: a manifest, a store, the real binary.

use crate::support;

use std::path::Path;
use std::process::Command;

use osk_builder::initramfs::unpack_newc;
use osk_builder::store::Store;
use support::{kernel_and_init, sh, simple, E};

fn osk(store: &Path, cwd: &Path, tmp: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_osk"))
        .arg("--cache")
        .arg(store)
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap()
}

#[test]
fn osk_build_is_reproducible_from_anywhere() {
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    kernel_and_init(&store);
    simple(
        &store,
        "test/getty:1",
        &[E::File("bin/getty", b"getty", 0o755)],
    );
    let manifest = d.path().join("node.yml");
    std::fs::write(
        &manifest,
        "kernel:\n  image: test/kernel:1\n  cmdline: console=ttyS0\ninit:\n  - test/init:1\n\
         services:\n  - name: getty\n    image: test/getty:1\n    command: [\"/bin/getty\"]\n  - name: getty2\n    image: test/getty:1\n    command: [\"/bin/getty\"]\n\
         files:\n  - path: etc/osk.yml\n    metadata: yaml\n  - path: etc/hello\n    contents: hi\n    mode: \"0644\"\n",
    )
    .unwrap();
    let mut outs = Vec::new();
    for run in ["one", "two"] {
        let cwd = d.path().join(format!("cwd-{run}"));
        let tmp = d.path().join(format!("tmp-{run}"));
        let out = d.path().join(format!("out-{run}"));
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let spool = d.path().join(format!("spool-{run}"));
        let o = osk(
            &store_dir,
            &cwd,
            &tmp,
            &[
                "build",
                "--dir",
                out.to_str().unwrap(),
                "--spool",
                spool.to_str().unwrap(),
                "--format",
                "kernel+initrd",
                "--format",
                "tar",
                manifest.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    for name in ["node-kernel", "node-initrd.img", "node-cmdline", "node.tar"] {
        let a = std::fs::read(outs[0].join(name)).unwrap();
        assert_eq!(a, std::fs::read(outs[1].join(name)).unwrap(), "{name}");
    }
    // Decompressed by the zstd tool, unpacked as the kernel does.
    let raw = Command::new("zstd")
        .arg("-dc")
        .arg(outs[0].join("node-initrd.img"))
        .output()
        .unwrap();
    assert!(raw.status.success());
    let x = unpack_newc(&raw.stdout).unwrap();
    let get = |p: &str| x.get(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"));
    get("containers/services/getty2/config.json");
    assert!(
        x.values().all(|u| u.mtime == 1_700_000_000),
        "SOURCE_DATE_EPOCH not honoured"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&get("containers/services/getty/config.json").data).unwrap();
    assert!(cfg["root"]["path"].is_string(), "{cfg}");
    assert!(String::from_utf8_lossy(&get("etc/osk.yml").data).contains("test/getty:1"));

    // A missing image fails cleanly and writes nothing.
    std::fs::write(&manifest, "init:\n  - test/missing:1\n").unwrap();
    let out = d.path().join("out-fail");
    let o = osk(
        &store_dir,
        d.path(),
        d.path(),
        &[
            "build",
            "--format",
            "tar",
            "--dir",
            out.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("test/missing:1"));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

#[test]
fn dry_run_prints_the_merged_manifest_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, out) = (dir.path().join("store"), dir.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    let base = dir.path().join("base.yml");
    let overlay = dir.path().join("overlay.yml");
    std::fs::write(
        &base,
        "services:\n  - name: web\n    image: example/web:1\n  - name: db\n    image: example/db:1\n",
    )
    .unwrap();
    std::fs::write(
        &overlay,
        "services:\n  - name: web\n    image: example/web:2\n",
    )
    .unwrap();
    let o = osk(
        &store,
        dir.path(),
        dir.path(),
        &[
            "build",
            "--dry-run",
            "--dir",
            out.to_str().unwrap(),
            base.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = String::from_utf8(o.stdout).unwrap();
    // The overlay replaced `web` in place, `db` stays, and nothing was pulled or written.
    let web = yaml.find("example/web:2").expect("overlay image");
    assert!(
        web < yaml.find("example/db:1").expect("base image"),
        "{yaml}"
    );
    assert!(!yaml.contains("example/web:1"), "{yaml}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

/// Two onboot containers of one name (LinuxKit's format/mount per disk)
/// build into numbered bundles in manifest order, so init's container ids
/// and log files (both the bundle's directory name) do not collide.
#[test]
fn repeated_onboot_names_build_in_order() {
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    simple(&store, "test/init:1", &[E::File("init", b"#!init", 0o755)]);
    simple(
        &store,
        "test/tool:1",
        &[E::File("bin/tool", b"tool", 0o755)],
    );
    let manifest = d.path().join("node.yml");
    std::fs::write(
        &manifest,
        "init:\n  - test/init:1\nonboot:\n  - name: format\n    image: test/tool:1\n    command: [\"/bin/tool\", \"sda\"]\n\
         \x20 - name: mount\n    image: test/tool:1\n    command: [\"/bin/tool\"]\n  - name: format\n    image: test/tool:1\n    command: [\"/bin/tool\", \"sdb\"]\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let o = osk(
        &store_dir,
        d.path(),
        d.path(),
        &[
            "build",
            "--format",
            "tar",
            "--dir",
            out.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tar = out.join("node.tar");
    let list = sh(&format!(
        "tar -tf {} | grep -E '^containers/onboot/[^/]+/?$'",
        tar.display()
    ));
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        [
            "containers/onboot/000-format",
            "containers/onboot/001-mount",
            "containers/onboot/002-format"
        ]
    );
    for (bundle, disk) in [("000-format", "sda"), ("002-format", "sdb")] {
        let config = sh(&format!(
            "tar -xOf {} containers/onboot/{bundle}/config.json",
            tar.display()
        ));
        assert!(
            config.contains(&format!("\"{disk}\"")),
            "{bundle}: {config}"
        );
    }
}

#[test]
fn osk_build_refuses_images_of_another_arch_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    // Single-platform amd64 images, as `osk pkg build` writes them.
    kernel_and_init(&store);
    let manifest = d.path().join("node.yml");
    std::fs::write(
        &manifest,
        "kernel:\n  image: test/kernel:1\n  cmdline: console=ttyS0\ninit:\n  - test/init:1\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let build = |arch: &str| {
        osk(
            &store_dir,
            d.path(),
            d.path(),
            &[
                "build",
                "--arch",
                arch,
                "--dir",
                out.to_str().unwrap(),
                manifest.to_str().unwrap(),
            ],
        )
    };
    let o = build("arm64");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an amd64 kernel was taken for arm64");
    assert!(err.contains("test/kernel:1"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());

    let o = osk(
        &store_dir,
        d.path(),
        d.path(),
        &[
            "build",
            "--arch",
            "arm64",
            "--format",
            "qcow2-bios",
            "--dir",
            out.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--format qcow2-bios boots through a PC BIOS")
            && err.contains("arm64 images boot through UEFI only"),
        "{err}"
    );

    let o = osk(
        &store_dir,
        d.path(),
        d.path(),
        &[
            "build",
            "--arch",
            "amd64",
            "--format",
            "rpi4",
            "--dir",
            out.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--format rpi4") && err.contains("--arch arm64"),
        "{err}"
    );

    let o = build("riscv64");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("riscv64") && err.contains("amd64, arm64"),
        "{err}"
    );

    let o = build("amd64");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("node-kernel").is_file());
}

/// A manifest naming a multi-platform index gets each build's own platform.
#[test]
fn osk_build_takes_the_arch_of_an_index() {
    use oci_spec::image::{MediaType, PlatformBuilder};
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    for name in ["kernel", "init"] {
        let mut manifests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let modules = support::layer(&[E::File("lib/modules/6.1.0/x.ko", b"ko", 0o644)]);
            let kernel = format!("{name} for {arch}");
            let file = if name == "kernel" { "kernel" } else { "init" };
            let img = support::image_for(
                &store,
                &format!("test/{name}-{arch}:1"),
                arch,
                vec![(
                    support::layer(&[
                        E::File(file, kernel.as_bytes(), 0o755),
                        E::File("kernel.tar", &modules, 0o644),
                    ]),
                    MediaType::ImageLayer,
                )],
            );
            let mut desc = store.resolve(&img.reference).unwrap().unwrap();
            desc.set_annotations(None);
            desc.set_platform(Some(
                PlatformBuilder::default()
                    .os("linux")
                    .architecture(arch)
                    .build()
                    .unwrap(),
            ));
            manifests.push(desc);
        }
        let index = osk_builder::store::index_of(manifests);
        let desc = store
            .put_bytes(MediaType::ImageIndex, &osk_builder::store::to_json(&index))
            .unwrap();
        let r = osk_builder::reference::Reference::parse(&format!("test/{name}:multi")).unwrap();
        store.tag(&r, &desc).unwrap();
    }
    let manifest = d.path().join("node.yml");
    std::fs::write(
        &manifest,
        "kernel:\n  image: test/kernel:multi\n  cmdline: console=ttyS0\ninit:\n  - test/init:multi\n",
    )
    .unwrap();
    for arch in ["amd64", "arm64"] {
        let out = d.path().join(arch);
        let o = osk(
            &store_dir,
            d.path(),
            d.path(),
            &[
                "build",
                "--arch",
                arch,
                "--dir",
                out.to_str().unwrap(),
                manifest.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read_to_string(out.join("node-kernel")).unwrap(),
            format!("kernel for {arch}")
        );
    }
}
