//! Spec generation end to end: precedence, adds, mounts, errors, JSON form.

use std::path::Path;

use serde_json::Value;

use super::*;
use crate::manifest::{self, ImageConfig, ImageEntry};

fn entry(yaml: &str) -> ImageEntry {
    let m = manifest::from_str(yaml, "t.yml", Path::new("/")).unwrap();
    m.services.into_iter().next().unwrap()
}

fn label(json: &str) -> ImageConfig {
    ImageConfig::from_label(json, "img").unwrap()
}

fn spec(e: &ImageEntry, l: Option<&ImageConfig>, d: &ImageDefaults) -> Value {
    let (s, _) = generate(e, l, d, ContainerKind::Service).unwrap();
    serde_json::from_slice(&to_json_bytes(&s)).unwrap()
}

fn image() -> ImageDefaults {
    ImageDefaults {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["arg".into()],
        env: vec!["PATH=/bin".into(), "X=1".into()],
        working_dir: Some("/work".into()),
        user: Some("5:6".into()),
        ..Default::default()
    }
}

#[test]
fn falls_back_to_image_config() {
    let s = spec(
        &entry("services:\n  - name: a\n    image: x\n"),
        None,
        &image(),
    );
    assert_eq!(s["process"]["args"], serde_json::json!(["/entry", "arg"]));
    assert_eq!(s["process"]["env"], serde_json::json!(["PATH=/bin", "X=1"]));
    assert_eq!(s["process"]["cwd"], "/work");
    assert_eq!(
        s["process"]["user"],
        serde_json::json!({"uid": 5, "gid": 6})
    );
    assert_eq!(
        s["root"],
        serde_json::json!({"path": "rootfs", "readonly": false})
    );
}

#[test]
fn defaults_match_linuxkit() {
    let s = spec(
        &entry("services:\n  - name: a\n    image: x\n"),
        None,
        &ImageDefaults {
            cmd: vec!["/x".into()],
            ..Default::default()
        },
    );
    assert_eq!(s["process"]["cwd"], "/");
    assert_eq!(s["process"]["env"], serde_json::json!([DEFAULT_PATH]));
    assert_eq!(
        s["process"]["capabilities"]["bounding"],
        serde_json::json!([])
    );
    let dests: Vec<&str> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        ["/dev", "/dev/pts", "/proc", "/sys", "/sys/fs/cgroup"]
    );
    assert_eq!(
        s["linux"]["namespaces"],
        serde_json::json!([{"type": "pid"}, {"type": "mount"}])
    );
    assert!(s.get("hostname").is_none());
}

#[test]
fn manifest_beats_label_beats_image() {
    let l = label(
        r#"{"command":["/label"],"cwd":"/l","capabilities":["CAP_SYS_CHROOT"],"net":"new","readonly":true}"#,
    );
    let s = spec(
        &entry("services:\n  - name: a\n    image: x\n"),
        Some(&l),
        &image(),
    );
    assert_eq!(s["process"]["args"], serde_json::json!(["/label"]));
    assert_eq!(s["process"]["cwd"], "/l");
    assert_eq!(s["root"]["readonly"], true);
    assert_eq!(
        s["process"]["capabilities"]["effective"],
        serde_json::json!(["CAP_SYS_CHROOT"])
    );
    assert_eq!(
        s["linux"]["namespaces"][0],
        serde_json::json!({"type": "network"})
    );

    let e = entry("services:\n  - name: a\n    image: x\n    command: [/m]\n    capabilities: [CAP_SYS_ADMIN]\n    net: host\n    readonly: false\n");
    let s = spec(&e, Some(&l), &image());
    assert_eq!(s["process"]["args"], serde_json::json!(["/m"]));
    assert_eq!(s["process"]["cwd"], "/l");
    assert_eq!(s["root"]["readonly"], false);
    assert_eq!(
        s["process"]["capabilities"]["bounding"],
        serde_json::json!(["CAP_SYS_ADMIN"])
    );
    assert_eq!(
        s["linux"]["namespaces"][0],
        serde_json::json!({"type": "pid"})
    );
}

#[test]
fn adds_append_even_when_the_list_is_replaced() {
    let l = label(r#"{"binds":["/l:/l"],"capabilities":["CAP_KILL"]}"#);
    let e = entry("services:\n  - name: a\n    image: x\n    command: [x]\n    binds.add: [\"/a:/a\"]\n    capabilities.add: [CAP_CHOWN]\n");
    let s = spec(&e, Some(&l), &image());
    let dests: Vec<&str> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert!(dests.contains(&"/l") && dests.contains(&"/a"), "{dests:?}");
    assert_eq!(
        s["process"]["capabilities"]["effective"],
        serde_json::json!(["CAP_CHOWN", "CAP_KILL"])
    );

    // LinuxKit drops binds.add when binds is also set; osk does not.
    let e = entry("services:\n  - name: a\n    image: x\n    command: [x]\n    binds: [\"/m:/m\"]\n    binds.add: [\"/a:/a\"]\n");
    let s = spec(&e, Some(&l), &image());
    let dests: Vec<&str> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert!(dests.contains(&"/m") && dests.contains(&"/a") && !dests.contains(&"/l"));
}

#[test]
fn later_mount_wins_by_destination() {
    let e = entry("services:\n  - name: a\n    image: x\n    command: [x]\n    tmpfs: [/dev/pts]\n    binds: [\"/host:/proc:ro\"]\n");
    let s = spec(&e, None, &image());
    let mounts = s["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 5);
    let proc = mounts.iter().find(|m| m["destination"] == "/proc").unwrap();
    assert_eq!(proc["type"], "bind");
    assert_eq!(proc["options"], serde_json::json!(["ro", "rbind"]));
    let pts = mounts
        .iter()
        .find(|m| m["destination"] == "/dev/pts")
        .unwrap();
    assert_eq!(pts["type"], "tmpfs");
}

#[test]
fn all_capabilities_and_ambient() {
    let e = entry("services:\n  - name: a\n    image: x\n    command: [x]\n    capabilities: [all]\n    ambient: [CAP_NET_RAW]\n");
    let s = spec(&e, None, &image());
    assert_eq!(
        s["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        ALL_CAPABILITIES.len()
    );
    assert_eq!(
        s["process"]["capabilities"]["ambient"],
        serde_json::json!(["CAP_NET_RAW"])
    );
}

#[test]
fn errors_name_the_service() {
    let e = entry("services:\n  - name: web\n    image: x\n    capabilities: [CAP_SYS_ADMN]\n");
    let err = generate(&e, None, &image(), ContainerKind::Service).unwrap_err();
    assert_eq!(
        err.to_string(),
        "services `web` (t.yml:2:5): unknown capability `CAP_SYS_ADMN` (did you mean `CAP_SYS_ADMIN`?)"
    );
    let err = generate(&e, None, &ImageDefaults::default(), ContainerKind::Service).unwrap_err();
    assert!(err.to_string().contains("no command"), "{err}");
    let e = entry("services:\n  - name: web\n    image: x\n    command: [x]\n    uid: nobody\n");
    let err = generate(&e, None, &image(), ContainerKind::Service).unwrap_err();
    assert!(
        err.to_string().contains("unknown user or group `nobody`"),
        "{err}"
    );
    let e = entry("services:\n  - name: web\n    image: x\n    command: [x]\n    net: bogus\n");
    let err = generate(&e, None, &image(), ContainerKind::Service).unwrap_err();
    assert!(err.to_string().contains("`net: bogus`"), "{err}");
}

#[test]
fn runtime_takes_label_then_manifest_and_osk_extras() {
    let l = label(
        r#"{"runtime":{"mkdir":["/l"],"cgroups":["c"],"bindNS":{"net":"/run/netns/l","ipc":"/run/ipc/l"}}}"#,
    );
    let e = entry("services:\n  - name: a\n    image: x\n    command: [x]\n    runtime:\n      mkdir: [/m]\n      bindNS: {net: /run/netns/m}\n    restart: \"no\"\n    depends_on: []\n    stop_grace_period: 3\n");
    let (_, rt) = generate(&e, Some(&l), &image(), ContainerKind::Service).unwrap();
    assert_eq!(rt.mkdir, ["/m"]);
    assert_eq!(rt.cgroups, ["c"]);
    assert_eq!(rt.bind_ns.net.as_deref(), Some("/run/netns/m"));
    assert_eq!(rt.bind_ns.ipc.as_deref(), Some("/run/ipc/l"));
    assert_eq!(rt.restart, Some(osk_layout::RestartPolicy::No));
    assert_eq!(rt.stop_grace_period, Some(3));
    assert_eq!(
        String::from_utf8(runtime_json_bytes(&rt)).unwrap(),
        "{\n  \"bindNS\": {\n    \"ipc\": \"/run/ipc/l\",\n    \"net\": \"/run/netns/m\"\n  },\n  \"cgroups\": [\n    \"c\"\n  ],\n  \"mkdir\": [\n    \"/m\"\n  ],\n  \"restart\": \"no\",\n  \"stopGracePeriod\": 3\n}\n"
    );
}

#[test]
fn json_is_sorted_and_stable() {
    let e = entry(
        "services:\n  - name: a\n    image: x\n    command: [x]\n    annotations: {z: 1, a: 2}\n",
    );
    let (s, _) = generate(&e, None, &image(), ContainerKind::Service).unwrap();
    let bytes = to_json_bytes(&s);
    assert_eq!(bytes, to_json_bytes(&s));
    assert!(bytes.ends_with(b"}\n"));
    let text = String::from_utf8(bytes).unwrap();
    let keys: Vec<usize> = [
        "\"annotations\"",
        "\"linux\"",
        "\"mounts\"",
        "\"ociVersion\"",
        "\"process\"",
        "\"root\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{text}");
}
