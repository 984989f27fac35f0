//! Metadata payloads for `osk run qemu --data`, in the JSON shape LinuxKit's
//! (and osk's) `metadata` package writes out as a tree under /run/config.

use serde_json::{json, Map, Value};

/// The JSON for `files`, each `(path, octal mode, content)`; `path` may
/// have directories (`ssh/authorized_keys`), created with mode 0755.
pub fn linuxkit_json(files: &[(&str, u32, &str)]) -> String {
    let mut root = Map::new();
    for (path, mode, content) in files {
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().expect("split yields one part");
        let mut at = &mut root;
        for dir in parts {
            let node = at
                .entry(dir)
                .or_insert_with(|| json!({"perm": "0755", "entries": {}}));
            at = node["entries"]
                .as_object_mut()
                .expect("a directory entry has entries");
        }
        at.insert(
            name.to_string(),
            json!({"perm": format!("{mode:04o}"), "content": content}),
        );
    }
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_directories() {
        let j = linuxkit_json(&[
            ("hostname", 0o644, "m1"),
            ("ssh/authorized_keys", 0o600, "k"),
        ]);
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["hostname"], json!({"perm": "0644", "content": "m1"}));
        assert_eq!(
            v["ssh"]["entries"]["authorized_keys"],
            json!({"perm": "0600", "content": "k"})
        );
        assert_eq!(v["ssh"]["perm"], "0755");
    }
}
