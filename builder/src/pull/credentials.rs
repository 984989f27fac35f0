//! Registry credentials from Docker's `config.json`, as `docker login` leaves them.
//!
//! Lookup follows Docker: a per-registry `credHelpers` entry first, then the
//! global `credsStore`, then the `auths` map (base64 `auth`, or `username` and
//! `password`). Helpers are run with the credential-helper protocol
//! (`docker-credential-NAME get`, server on stdin, JSON on stdout).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

use crate::reference::DEFAULT_REGISTRY;

/// Docker Hub's historical name, which `docker login` still writes.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("cannot read the Docker config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Docker config {path} is not valid JSON; fix or remove it")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Docker config {path}: the `auth` entry for {key} is not base64 of USER:PASSWORD; run `docker login {key}` again or fix the entry")]
    BadAuth { path: PathBuf, key: String },
    #[error("credential helper {helper} (named in {path} for {registry}) cannot be run: {detail}; install it, or put the credentials into `auths` there")]
    Helper {
        path: PathBuf,
        registry: String,
        helper: String,
        detail: HelperError,
    },
}

/// What went wrong running a credential helper (the caller names the helper).
#[derive(Debug, Error)]
pub enum HelperError {
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    #[error("writing to it failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Wait(#[source] std::io::Error),
    #[error("it failed ({status}): {said}")]
    Failed {
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("its answer is not the helper protocol's JSON: {0}")]
    Reply(#[source] serde_json::Error),
}

/// What to present to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    // Never print a password into a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"))
}

/// The credentials `config_dir/config.json` holds for `registry` (as written
/// in image references: `host[:port]`, `docker.io` for Docker Hub).
pub fn lookup(config_dir: &Path, registry: &str) -> Result<Credentials, CredentialsError> {
    let path = config_dir.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(source) => return Err(CredentialsError::Read { path, source }),
    };
    let config: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|source| CredentialsError::Json {
            path: path.clone(),
            source,
        })?;

    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| same_registry(k, registry))
        .map(|(_, v)| v.clone())
        .or_else(|| config.creds_store.clone().filter(|s| !s.is_empty()));
    if let Some(helper) = helper {
        let found = run_helper(&helper, registry).map_err(|detail| CredentialsError::Helper {
            path: path.clone(),
            registry: registry.to_string(),
            helper: format!("docker-credential-{helper}"),
            detail,
        })?;
        if let Some(c) = found {
            return Ok(c);
        }
    }

    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry))
    else {
        return Ok(Credentials::Anonymous);
    };
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || CredentialsError::BadAuth {
            path: path.clone(),
            key: key.clone(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    if entry.identitytoken.is_some() {
        tracing::warn!(
            "{}: {key} has only an OAuth identity token, which osk cannot use; pulling anonymously (log in with a username and password or access token instead)",
            path.display()
        );
    }
    Ok(Credentials::Anonymous)
}

/// Whether a `config.json` key (a host, or a URL like `https://host/v1/`) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    if host == registry {
        return true;
    }
    let hub = |h: &str| DOCKER_HUB_ALIASES.contains(&h);
    hub(host) && hub(registry)
}

/// Runs `docker-credential-NAME get`; `Ok(None)` when it holds nothing for `registry`.
fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>, HelperError> {
    run_helper_program(Path::new(&format!("docker-credential-{name}")), registry)
}

fn run_helper_program(program: &Path, registry: &str) -> Result<Option<Credentials>, HelperError> {
    let server = if registry == DEFAULT_REGISTRY {
        DOCKER_HUB_AUTH_KEY
    } else {
        registry
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HelperError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(HelperError::Write)?;
    }
    let out = child.wait_with_output().map_err(HelperError::Wait)?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // The protocol's way of saying "nothing stored for this server".
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            status: out.status,
            said: said.trim().to_string(),
        });
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(HelperError::Reply)?;
    if reply.username == "<token>" {
        tracing::warn!(
            "{}: the credential helper holds an OAuth identity token for {registry}, which osk cannot use; pulling anonymously",
            program.display()
        );
        return Ok(None);
    }
    Ok(Some(Credentials::Basic {
        username: reply.username,
        password: reply.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_dir(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        dir
    }

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn base64_auth_by_host_and_url_keys() {
        // "alice:s3cr:et" — the password may itself contain a colon.
        let dir = config_dir(
            r#"{"auths":{
                "registry.example:5000":{"auth":"YWxpY2U6czNjcjpldA=="},
                "https://other.example/v2/":{"auth":"Ym9iOnB3"}}}"#,
        );
        assert_eq!(
            lookup(dir.path(), "registry.example:5000").unwrap(),
            basic("alice", "s3cr:et")
        );
        assert_eq!(
            lookup(dir.path(), "other.example").unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(
            lookup(dir.path(), "registry.example").unwrap(),
            Credentials::Anonymous,
            "a key with a port must not match the host without it"
        );
    }

    #[test]
    fn username_password_fields_and_docker_hub_aliases() {
        let dir = config_dir(
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#,
        );
        assert_eq!(lookup(dir.path(), "docker.io").unwrap(), basic("u", "p"));
        assert_eq!(
            lookup(dir.path(), "ghcr.io").unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn missing_config_is_anonymous_and_bad_entries_are_named() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            lookup(empty.path(), "docker.io").unwrap(),
            Credentials::Anonymous
        );

        let dir = config_dir(r#"{"auths":{"r.example":{"auth":"not base64!"}}}"#);
        let err = lookup(dir.path(), "r.example").unwrap_err().to_string();
        assert!(
            err.contains("r.example") && err.contains("config.json"),
            "{err}"
        );

        let dir = config_dir("{ nope");
        let err = lookup(dir.path(), "r.example").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn identity_token_only_falls_back_to_anonymous() {
        let dir = config_dir(r#"{"auths":{"r.example":{"identitytoken":"xyz"}}}"#);
        assert_eq!(
            lookup(dir.path(), "r.example").unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn missing_credential_helper_is_a_clear_error() {
        let dir = config_dir(
            r#"{"credHelpers":{"r.example":"osk-test-no-such-helper"},"auths":{"r.example":{"auth":"dTpw"}}}"#,
        );
        let err = lookup(dir.path(), "r.example").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-osk-test-no-such-helper") && err.contains("install"),
            "{err}"
        );
        // Other registries are not affected by that helper.
        assert_eq!(
            lookup(dir.path(), "q.example").unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn credential_helper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\ncase \"$server\" in\n  r.example) echo '{\"ServerURL\":\"r.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            run_helper_program(&helper, "r.example").unwrap(),
            Some(basic("hu", "hs"))
        );
        assert_eq!(run_helper_program(&helper, "q.example").unwrap(), None);
    }
}
