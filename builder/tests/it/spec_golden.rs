//! Golden tests: manifests (+ image labels and image configs) under
//! `tests/golden/CASE/` must produce exactly the checked-in `config.json`,
//! `runtime.json` and `dry-run.yml`. `UPDATE_GOLDEN=1` rewrites them.
//!
//! A case holds `*.yml` (merged in name order), optional `image.json`
//! (`entrypoint`, `cmd`, `env`, `working_dir`, `user` for every image) and
//! optional `label-NAME.json` (the `org.mobyproject.config` label of entry NAME).

use std::path::{Path, PathBuf};

use osk_builder::manifest::{self, ContainerKind, ImageConfig};
use osk_builder::spec::{self, ImageDefaults};

fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn image_defaults(case: &Path) -> ImageDefaults {
    let Ok(text) = std::fs::read_to_string(case.join("image.json")) else {
        return ImageDefaults::default();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let opt = |k: &str| v[k].as_str().map(str::to_owned);
    ImageDefaults {
        entrypoint: strings(&v, "entrypoint"),
        cmd: strings(&v, "cmd"),
        env: strings(&v, "env"),
        working_dir: opt("working_dir"),
        user: opt("user"),
        ..Default::default()
    }
}

/// Every output of a case: relative path → bytes.
fn render(case: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml") && !p.ends_with("dry-run.yml"))
        .collect();
    inputs.sort();
    let m = manifest::load(&inputs).unwrap_or_else(|e| panic!("{e}"));
    let defaults = image_defaults(case).with_manifest(&m);

    let case_abs = std::path::absolute(case).unwrap();
    let dry_run = m
        .to_yaml()
        .replace(&case_abs.display().to_string(), "<case>");
    let mut out = vec![(PathBuf::from("dry-run.yml"), dry_run.into_bytes())];
    for kind in [
        ContainerKind::Onboot,
        ContainerKind::Onshutdown,
        ContainerKind::Service,
    ] {
        for entry in m.section(kind) {
            let label = std::fs::read_to_string(case.join(format!("label-{}.json", entry.name)))
                .ok()
                .map(|t| {
                    ImageConfig::from_label(&t, &entry.image.text).unwrap_or_else(|e| panic!("{e}"))
                });
            let (s, rt) = spec::generate(entry, label.as_ref(), &defaults, kind)
                .unwrap_or_else(|e| panic!("{e}"));
            let dir = PathBuf::from(kind.section()).join(&entry.name);
            out.push((dir.join("config.json"), spec::to_json_bytes(&s)));
            out.push((dir.join("runtime.json"), spec::runtime_json_bytes(&rt)));
        }
    }
    out
}

#[test]
fn golden() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let expected_dir = case.join("expected");
        for (rel, bytes) in render(case) {
            let path = expected_dir.join(&rel);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            match std::fs::read(&path) {
                Ok(want) if want == bytes => {}
                Ok(want) => failures.push(format!(
                    "{} differs:\n--- expected\n{}\n--- got\n{}",
                    path.display(),
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(&bytes)
                )),
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to accept)",
        failures.join("\n\n")
    );
}
