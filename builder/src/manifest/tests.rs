//! Manifest loading, merging and validation on inline YAML.

use std::path::{Path, PathBuf};

use osk_layout::RestartPolicy;

use super::*;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    from_str(text, "node.yml", Path::new("/work/m"))
}

/// The error as the user sees it.
fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const FULL: &str = r#"
kernel:
  image: linuxkit/kernel:6.6
  cmdline: "console=ttyS0"
  binary: bzImage
  tar: none
  ucode: intel-ucode.cpio
init:
  - linuxkit/init:abc
  - "@pkg:../pkgs/runc"
onboot:
  - name: sysctl
    image: linuxkit/sysctl:abc
    timeout: 30
onshutdown:
  - name: bye
    image: alpine
services:
  - name: getty
    image: "@pkg:pkgs/getty"
    capabilities: [all]
    capabilities.add: [CAP_SYS_ADMIN]
    ambient: [CAP_NET_RAW]
    mounts:
      - type: cgroup
        options: [rw]
    binds: ["/etc:/hostetc"]
    binds.add: ["/var:/var"]
    tmpfs: ["/run:size=1m"]
    command: [/sbin/getty, "-L"]
    env: [A=1]
    cwd: /root
    net: host
    pid: new
    ipc: host
    uts: host
    userns: host
    uidMappings: [{containerID: 0, hostID: 1000, size: 1}]
    gidMappings: [{containerID: 0, hostID: 1000, size: 1}]
    hostname: box
    readonly: true
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    rootfsPropagation: shared
    cgroupsPath: /osk/getty
    resources:
      memory: {limit: 1000000}
      cpu: {shares: 512}
      pids: {limit: 100}
    sysctl: {net.ipv4.ip_forward: 1}
    rlimits: ["nofile,1024,2048"]
    uid: 0
    gid: sysctl
    additionalGids: [1, sysctl]
    noNewPrivileges: true
    oomScoreAdj: -500
    devices: [{path: /dev/null, type: c, major: 1, minor: 3, mode: "0666"}]
    annotations: {a: b}
    runtime:
      mkdir: [/var/lib/getty]
      mounts: [{destination: /x, type: bind, source: /y, options: [rbind]}]
      cgroups: [getty]
      interfaces: [{name: eth1, add: veth, peer: eth1p, createInRoot: true}]
      bindNS: {net: /run/netns/getty}
      namespace: other
    restart: always
    depends_on: [dhcpcd]
    stop_grace_period: 5
  - name: dhcpcd
    image: linuxkit/dhcpcd:abc
files:
  - path: etc/motd
    contents: "hi\n"
    mode: "0644"
    uid: 0
    gid: root
  - path: etc/dir
    directory: true
  - path: etc/link
    symlink: /etc/motd
  - path: etc/key
    source: key.pub
    optional: true
  - path: etc/linuxkit.yml
    metadata: yaml
volumes:
  - name: data
    image: alpine:3
    readonly: true
    format: oci
    platforms: [linux/amd64]
"#;

#[test]
fn parses_every_key() {
    let m = parse(FULL).unwrap();
    assert_eq!(
        m.kernel.image.as_ref().unwrap().source,
        ImageSource::Reference("linuxkit/kernel:6.6".into())
    );
    assert_eq!(m.kernel.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!(m.kernel.binary.as_deref(), Some("bzImage"));
    assert_eq!(m.kernel.tar.as_deref(), Some("none"));
    assert_eq!(m.kernel.ucode.as_deref(), Some("intel-ucode.cpio"));
    assert_eq!(
        m.init[1].source,
        ImageSource::Package(PathBuf::from("/work/pkgs/runc"))
    );
    assert_eq!(m.onboot[0].timeout, Some(30));
    assert_eq!(m.onshutdown[0].name, "bye");

    let g = &m.services[0];
    assert_eq!(
        g.image.source,
        ImageSource::Package(PathBuf::from("/work/m/pkgs/getty"))
    );
    assert_eq!(g.image.to_string(), "@pkg:/work/m/pkgs/getty");
    let c = &g.config;
    assert_eq!(c.capabilities.as_deref(), Some(&["all".to_string()][..]));
    assert_eq!(c.capabilities_add.as_ref().unwrap(), &["CAP_SYS_ADMIN"]);
    assert_eq!(c.ambient.as_ref().unwrap(), &["CAP_NET_RAW"]);
    assert_eq!(
        c.mounts.as_ref().unwrap()[0].kind.as_deref(),
        Some("cgroup")
    );
    assert_eq!(c.binds.as_ref().unwrap(), &["/etc:/hostetc"]);
    assert_eq!(c.binds_add.as_ref().unwrap(), &["/var:/var"]);
    assert_eq!(c.tmpfs.as_ref().unwrap(), &["/run:size=1m"]);
    assert_eq!(c.command.as_ref().unwrap(), &["/sbin/getty", "-L"]);
    assert_eq!(c.env.as_ref().unwrap(), &["A=1"]);
    assert_eq!(c.cwd.as_deref(), Some("/root"));
    assert_eq!(
        (
            c.net.as_deref(),
            c.pid.as_deref(),
            c.ipc.as_deref(),
            c.uts.as_deref(),
            c.userns.as_deref()
        ),
        (
            Some("host"),
            Some("new"),
            Some("host"),
            Some("host"),
            Some("host")
        )
    );
    assert_eq!(c.uid_mappings.as_ref().unwrap()[0].host_id, 1000);
    assert_eq!(c.gid_mappings.as_ref().unwrap()[0].size, 1);
    assert_eq!(c.hostname.as_deref(), Some("box"));
    assert_eq!(c.readonly, Some(true));
    assert_eq!(c.masked_paths.as_ref().unwrap(), &["/proc/kcore"]);
    assert_eq!(c.readonly_paths.as_ref().unwrap(), &["/proc/sys"]);
    assert_eq!(c.rootfs_propagation.as_deref(), Some("shared"));
    assert_eq!(c.cgroups_path.as_deref(), Some("/osk/getty"));
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.memory.as_ref().unwrap().limit, Some(1_000_000));
    assert_eq!(r.cpu.as_ref().unwrap().shares, Some(512));
    assert_eq!(r.pids.as_ref().unwrap().limit, 100);
    assert_eq!(c.sysctl.as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    assert_eq!(c.rlimits.as_ref().unwrap(), &["nofile,1024,2048"]);
    assert_eq!(c.uid, Some(Id::Num(0)));
    assert_eq!(c.gid, Some(Id::Name("sysctl".into())));
    assert_eq!(
        c.additional_gids.as_ref().unwrap(),
        &[Id::Num(1), Id::Name("sysctl".into())]
    );
    assert_eq!(c.no_new_privileges, Some(true));
    assert_eq!(c.oom_score_adj, Some(-500));
    assert_eq!(c.devices.as_ref().unwrap()[0].mode.as_deref(), Some("0666"));
    assert_eq!(c.annotations.as_ref().unwrap()["a"], "b");
    let rt = c.runtime.as_ref().unwrap();
    assert_eq!(rt.mkdir.as_ref().unwrap(), &["/var/lib/getty"]);
    assert_eq!(rt.mounts.as_ref().unwrap()[0].source.as_deref(), Some("/y"));
    assert_eq!(rt.cgroups.as_ref().unwrap(), &["getty"]);
    assert!(rt.interfaces.as_ref().unwrap()[0].create_in_root);
    assert_eq!(
        rt.bind_ns.as_ref().unwrap().net.as_deref(),
        Some("/run/netns/getty")
    );
    assert_eq!(rt.namespace.as_deref(), Some("other"));
    assert_eq!(g.restart, Some(RestartPolicy::Always));
    assert_eq!(g.depends_on, ["dhcpcd"]);
    assert_eq!(g.stop_grace_period, Some(5));
    assert_eq!(g.origin.pos, Pos { line: 19, col: 5 });
    assert_eq!(g.kind, Some(ContainerKind::Service));

    assert_eq!(m.files.len(), 5);
    assert_eq!(m.files[0].mode_bits(), Ok(0o644));
    assert_eq!(m.files[1].mode_bits(), Ok(0o700));
    assert_eq!(
        m.files[3].source_path(),
        Some(PathBuf::from("/work/m/key.pub"))
    );
    assert_eq!(m.files[4].metadata.as_deref(), Some("yaml"));
    assert_eq!(m.volumes[0].format, Some(VolumeFormat::Oci));
    assert!(m.volumes[0].readonly);

    assert_eq!(m.id_map()["sysctl"], 100);
    assert_eq!(m.id_map()["dhcpcd"], 103);
}

#[test]
fn unset_differs_from_empty() {
    let m = parse("services:\n  - name: a\n    image: x\n    binds: []\n").unwrap();
    assert_eq!(m.services[0].config.binds, Some(vec![]));
    assert_eq!(m.services[0].config.command, None);
}

#[test]
fn empty_manifest_is_empty() {
    assert_eq!(parse("").unwrap(), Manifest::default());
    assert_eq!(parse("services:\n").unwrap(), Manifest::default());
}

#[test]
fn unknown_key_in_entry_suggests() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    capabilites: [all]\n"),
        "node.yml:4:5: unknown key `capabilites` (did you mean `capabilities`?)"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    binds.ad: []\n"),
        "node.yml:4:5: unknown key `binds.ad` (did you mean `binds.add`?)"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    dependson: [b]\n"),
        "node.yml:4:5: unknown key `dependson` (did you mean `depends_on`?)"
    );
}

#[test]
fn unknown_top_level_key_suggests() {
    assert_eq!(
        error("kernel: {}\nservice:\n  - name: a\n"),
        "node.yml:2:1: unknown key `service` (did you mean `services`?)"
    );
}

#[test]
fn unknown_nested_key_suggests() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    runtime:\n      mkdirs: [/x]\n"),
        "node.yml:5:7: unknown key `mkdirs` (did you mean `mkdir`?)"
    );
    assert_eq!(
        error("kernel:\n  cmdlin: x\n"),
        "node.yml:2:3: unknown key `cmdlin` (did you mean `cmdline`?)"
    );
    assert_eq!(
        error("files:\n  - path: a\n    contents: x\n    mdoe: \"0644\"\n"),
        "node.yml:4:5: unknown key `mdoe` (did you mean `mode`?)"
    );
}

#[test]
fn wrong_type_points_at_value() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    readonly: maybe\n"),
        "node.yml:4:15: invalid type: string \"maybe\", expected a boolean"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    command: /bin/sh\n"),
        "node.yml:4:14: invalid type: string \"/bin/sh\", expected a sequence"
    );
    assert_eq!(
        error("services: {a: 1}\n"),
        "node.yml:1:11: `services` must be a list, found a mapping"
    );
}

#[test]
fn missing_required_fields() {
    assert_eq!(
        error("services:\n  - image: x\n"),
        "node.yml:2:5: entry of `services` is missing required key `name`"
    );
    assert_eq!(
        error("onboot:\n  - name: a\n"),
        "node.yml:2:5: entry of `onboot` is missing required key `image`"
    );
    assert_eq!(
        error("files:\n  - contents: x\n"),
        "node.yml:2:5: missing field `path`"
    );
}

#[test]
fn duplicate_names_in_one_file() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n  - name: a\n    image: y\n"),
        "node.yml:4:5: duplicate name `a` in `services` (first at line 2); service names must be unique"
    );
    // The same name in different sections is fine.
    parse("onboot:\n  - name: a\n    image: x\nservices:\n  - name: a\n    image: y\n").unwrap();
    // onboot and onshutdown run in order and are numbered: a name may repeat
    // (format and mount for two disks, as in LinuxKit's examples).
    let m = parse(
        "onboot:\n  - name: format\n    image: f:1\n    command: [sda]\n  - name: mount\n    image: m:1\n  - name: format\n    image: f:1\n    command: [sdb]\n\
         onshutdown:\n  - name: x\n    image: x:1\n  - name: x\n    image: x:2\n",
    )
    .unwrap();
    let names: Vec<&str> = m.onboot.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["format", "mount", "format"]);
    assert_eq!(
        m.onboot[2].config.command.as_deref(),
        Some(&["sdb".to_string()][..])
    );
    assert_eq!(m.onshutdown[1].image.text, "x:2");
}

#[test]
fn a_later_file_replaces_every_entry_of_a_name_and_appends_new_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yml",
        "onboot:\n  - name: format\n    image: f:1\n  - name: mount\n    image: m:1\n  - name: format\n    image: f:2\n  - name: last\n    image: l:1\n",
    );
    let b = write(
        dir.path(),
        "b.yml",
        "onboot:\n  - name: new\n    image: n:1\n  - name: format\n    image: g:1\n  - name: format\n    image: g:2\n  - name: format\n    image: g:3\n",
    );
    let m = load(&[a, b]).unwrap();
    let got: Vec<String> = m
        .onboot
        .iter()
        .map(|e| format!("{}={}", e.name, e.image.text))
        .collect();
    assert_eq!(
        got,
        [
            "format=g:1",
            "format=g:2",
            "format=g:3",
            "mount=m:1",
            "last=l:1",
            "new=n:1"
        ]
    );
}

#[test]
fn extras_only_where_they_apply() {
    assert_eq!(
        error("onboot:\n  - name: a\n    image: x\n    restart: always\n"),
        "node.yml:4:5: `restart` is only valid in `services`, not in `onboot`"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    timeout: 3\n"),
        "node.yml:4:5: `timeout` is only valid in `onboot` and `onshutdown`, not in `services`; services run until stopped, see `stop_grace_period`"
    );
    assert_eq!(
        error("onshutdown:\n  - name: a\n    image: x\n    stop_grace_period: 3\n"),
        "node.yml:4:5: `stop_grace_period` is only valid in `services`, not in `onshutdown`; use `timeout` to bound an onboot/onshutdown container"
    );
    assert_eq!(
        error("onboot:\n  - name: a\n    image: x\n    depends_on: [b]\n"),
        "node.yml:4:5: `depends_on` is only valid in `services`, not in `onboot`"
    );
}

#[test]
fn restart_values() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    restart: allways\n"),
        "node.yml:4:14: invalid value `allways` (did you mean `always`?); expected one of: no, on-failure, always"
    );
}

#[test]
fn depends_on_must_exist_and_not_cycle() {
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    depends_on: [dhcp]\n  - name: dhcpcd\n    image: x\n"),
        "node.yml:4:18: service `a` depends on `dhcp`, which is not a service (did you mean `dhcpcd`?)"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: x\n    depends_on: [a]\n"),
        "node.yml:4:18: service `a` depends on itself"
    );
    let cyc = "services:
  - name: a
    image: x
    depends_on: [b]
  - name: b
    image: x
    depends_on: [c]
  - name: c
    image: x
    depends_on: [a]
";
    assert_eq!(
        error(cyc),
        "node.yml:10:18: dependency cycle: a -> b -> c -> a"
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let e = parse("services:\n  - name: [a\n").unwrap_err();
    let ManifestError::Invalid { pos, file, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(file, "node.yml");
    assert!(pos.is_some());
    assert_eq!(
        error("a: 1\na: 2\n").split(": ").next(),
        Some("node.yml:2:1")
    );
}

#[test]
fn bad_names_and_refs() {
    assert_eq!(
        error("services:\n  - name: ../x\n    image: x\n"),
        "node.yml:2:11: invalid name `../x`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: \"a b\"\n"),
        "node.yml:3:12: image reference `a b` contains whitespace"
    );
    assert_eq!(
        error("services:\n  - name: a\n    image: Linuxkit/getty:v1\n"),
        "node.yml:3:12: image reference \"Linuxkit/getty:v1\": repository component \"Linuxkit\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    );
}

#[test]
fn file_rules() {
    assert_eq!(
        error("files:\n  - path: a\n"),
        "node.yml:2:5: file `a` has no content: set `contents`, `source`, `metadata`, `symlink` or `directory`"
    );
    assert_eq!(
        error("files:\n  - path: a\n    contents: x\n    source: y\n"),
        "node.yml:4:5: file `a`: `source` cannot be combined with `directory`, `symlink` or `contents`"
    );
    assert_eq!(
        error("files:\n  - path: a\n    contents: x\n    mode: \"999\"\n"),
        "node.yml:4:5: mode `999` is not an octal file mode like \"0644\""
    );
    assert_eq!(
        error("files:\n  - path: a\n    metadata: yml\n"),
        "node.yml:3:5: invalid value `yml` (did you mean `yaml`?); expected one of: yaml, json"
    );
}

#[test]
fn volume_rules() {
    assert_eq!(
        error("volumes:\n  - name: Data\n"),
        "node.yml:2:5: invalid volume name `Data`: use lowercase letters, digits, `_` and `-`"
    );
    assert!(error("volumes:\n  - name: d\n    format: tar\n")
        .starts_with("node.yml:3:13: invalid value `tar`"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn merge_appends_overrides_and_replaces_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yml",
        "kernel:\n  image: k:1\n  cmdline: quiet\ninit: [i:1, \"@pkg:p\"]\nonboot:\n  - name: one\n    image: o:1\nservices:\n  - name: s1\n    image: s:1\n    env: [A=1]\n  - name: s2\n    image: s:2\nfiles:\n  - path: /etc/x\n    contents: a\n  - path: etc/y\n    contents: a\nvolumes:\n  - name: v\n",
    );
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let b = write(
        &dir.path().join("sub"),
        "b.yml",
        "kernel:\n  cmdline: console=ttyS0\ninit: [i:1, i:2, \"@pkg:../p\"]\nonboot:\n  - name: two\n    image: o:2\nservices:\n  - name: s1\n    image: s:1b\n  - name: s3\n    image: s:3\nfiles:\n  - path: etc/x\n    contents: b\nvolumes:\n  - name: v\n    readonly: true\n",
    );
    let m = load(&[a, b.clone()]).unwrap();
    assert_eq!(m.kernel.image.as_ref().unwrap().text, "k:1");
    assert_eq!(m.kernel.cmdline.as_deref(), Some("console=ttyS0"));
    let init: Vec<String> = m.init.iter().map(|r| r.text.clone()).collect();
    assert_eq!(init, ["i:1", "@pkg:p", "i:2"]);
    let names = |v: &[ImageEntry]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&m.onboot), ["one", "two"]);
    assert_eq!(names(&m.services), ["s1", "s2", "s3"]);
    // Replaced in place, wholly: the old env does not survive.
    assert_eq!(m.services[0].image.text, "s:1b");
    assert_eq!(m.services[0].config.env, None);
    assert_eq!(&*m.services[0].origin.file, b.display().to_string());
    assert_eq!(m.files.len(), 2);
    assert_eq!(m.files[0].contents.as_deref(), Some("b"));
    assert_eq!(m.files[1].path, "etc/y");
    assert_eq!(m.volumes.len(), 1);
    assert!(m.volumes[0].readonly);
}

#[test]
fn merged_dependencies_are_checked_after_merge() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yml",
        "services:\n  - name: web\n    image: w\n    depends_on: [db]\n",
    );
    let b = write(
        dir.path(),
        "b.yml",
        "services:\n  - name: db\n    image: d\n",
    );
    assert_eq!(load(&[a.clone(), b]).unwrap().services.len(), 2);
    let e = load(std::slice::from_ref(&a)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:4:18: service `web` depends on `db`, which is not a service",
            a.display()
        )
    );
}

#[test]
fn missing_file_names_it() {
    let e = load(&[PathBuf::from("/nonexistent/x.yml")]).unwrap_err();
    assert_eq!(e.to_string(), "cannot read manifest /nonexistent/x.yml");
    // The io error is the source, shown once by the error chain.
    let source = std::error::Error::source(&e).unwrap();
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn dry_run_yaml_round_trips() {
    let m = parse(FULL).unwrap();
    let y = m.to_yaml();
    assert_eq!(y, m.to_yaml());
    let again = from_str(&y, "dry-run", Path::new("/elsewhere")).unwrap();
    assert_eq!(again.to_yaml(), y);
    assert_eq!(again.services[0].config, m.services[0].config);
    assert_eq!(again.services[0].image.source, m.services[0].image.source);
    assert!(y.contains("capabilities.add:"), "{y}");
}

#[test]
fn label_parses_with_positions_and_rejects_name() {
    let l = ImageConfig::from_label(
        r#"{"capabilities":["CAP_SYS_ADMIN"],"binds":["/a:/b"],"net":"new"}"#,
        "x/y:1",
    )
    .unwrap();
    assert_eq!(l.capabilities.unwrap(), ["CAP_SYS_ADMIN"]);
    assert_eq!(l.net.as_deref(), Some("new"));
    assert_eq!(
        ImageConfig::from_label(r#"{"binds":[],"comand":["x"]}"#, "x/y:1")
            .unwrap_err()
            .to_string(),
        "org.mobyproject.config label of x/y:1:1:13: unknown key `comand` (did you mean `command`?)"
    );
    assert_eq!(
        ImageConfig::from_label(r#"{"name":"x"}"#, "x/y:1")
            .unwrap_err()
            .to_string(),
        "org.mobyproject.config label of x/y:1:1:2: `name` cannot be set in an image's label"
    );
}
