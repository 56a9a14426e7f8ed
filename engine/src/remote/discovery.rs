//! Plugin discovery, as dockerd does it (moby `pkg/plugins/discovery.go`).
//!
//! Contract: [`find`] looks for plugin `NAME` in each directory of the search path,
//! in order, and in each directory tries, in order: `NAME.sock` and `NAME/NAME.sock`
//! (a unix socket the plugin listens on), then `NAME.spec` and `NAME/NAME.spec` (one
//! line: a URL, `unix:///path` or `tcp://host:port`), then `NAME.json` and
//! `NAME/NAME.json` (`{"Name", "Addr", "TLSConfig"}`). The first hit wins; a spec
//! file that cannot be read or parsed is an error naming the file (never skipped
//! silently). A spec asking for TLS is refused by name: tapnet does not implement
//! plugin TLS. The default search path is dockerd's: `/run/docker/plugins`,
//! `/etc/docker/plugins`, `/usr/lib/docker/plugins`. Names are checked
//! ([`validate_name`]) so a name never leaves the directory.

use super::PluginError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// dockerd's plugin directories, in its search order.
pub const DEFAULT_DIRS: [&str; 3] = [
    "/run/docker/plugins",
    "/etc/docker/plugins",
    "/usr/lib/docker/plugins",
];

/// Where a plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port` over TCP (plain HTTP).
    Tcp(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix://{}", p.display()),
            Addr::Tcp(h) => write!(f, "tcp://{h}"),
        }
    }
}

/// A plugin found: its address and the file that said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where it listens.
    pub addr: Addr,
    /// The socket or spec file found.
    pub source: PathBuf,
}

/// Check a plugin name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters (so it
/// names a file in a plugin directory and nothing else).
pub fn validate_name(name: &str) -> Result<(), PluginError> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {
            chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
        _ => false,
    };
    if ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(PluginError::Spec {
            plugin: name.to_string(),
            message: "invalid plugin name: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into(),
        })
    }
}

/// Parse a `.spec` file's content: one URL, `unix:///path` or `tcp://host:port`.
pub fn parse_spec(content: &str) -> Result<Addr, String> {
    parse_url(content.trim())
}

/// A `.json` spec file (moby `plugins.Plugin` as written to disk).
#[derive(Debug, Deserialize)]
struct JsonSpec {
    #[serde(rename = "Name", default)]
    _name: String,
    #[serde(rename = "Addr", default)]
    addr: String,
    #[serde(rename = "TLSConfig", default)]
    tls_config: Option<serde_json::Value>,
}

/// Parse a `.json` spec file's content: `{"Name", "Addr", "TLSConfig"}`. A
/// `TLSConfig` other than null/absent or `{"InsecureSkipVerify": …}` alone is refused
/// (tapnet speaks plain HTTP to plugins); so is an `https://` address.
pub fn parse_json_spec(content: &str) -> Result<Addr, String> {
    let spec: JsonSpec =
        serde_json::from_str(content).map_err(|e| format!("not a plugin spec: {e}"))?;
    if let Some(tls) = &spec.tls_config {
        let empty = match tls {
            serde_json::Value::Null => true,
            serde_json::Value::Object(m) => m.values().all(|v| {
                v.is_null() || v == &serde_json::Value::Bool(false) || v.as_str() == Some("")
            }),
            _ => false,
        };
        if !empty {
            return Err(
                "TLSConfig is not supported: tapnet talks plain HTTP to plugins (use a unix socket)"
                    .into(),
            );
        }
    }
    if spec.addr.is_empty() {
        return Err("Addr is empty".into());
    }
    parse_url(spec.addr.trim())
}

fn parse_url(url: &str) -> Result<Addr, String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: a unix address needs an absolute path (unix:///path)"
            ));
        }
        return Ok(Addr::Unix(PathBuf::from(path)));
    }
    if let Some(host) = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let host = host.trim_end_matches('/');
        if host.is_empty() || !host.contains(':') {
            return Err(format!("{url:?}: a tcp address needs host:port"));
        }
        return Ok(Addr::Tcp(host.to_string()));
    }
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: TLS is not supported: tapnet talks plain HTTP to plugins"
        ));
    }
    if url.starts_with('/') {
        return Ok(Addr::Unix(PathBuf::from(url)));
    }
    Err(format!(
        "{url:?}: not a plugin address (unix:///path or tcp://host:port)"
    ))
}

/// The candidate files for `name` in `dir`, in search order.
pub fn candidates(dir: &Path, name: &str) -> Vec<PathBuf> {
    let sub = dir.join(name);
    vec![
        dir.join(format!("{name}.sock")),
        sub.join(format!("{name}.sock")),
        dir.join(format!("{name}.spec")),
        sub.join(format!("{name}.spec")),
        dir.join(format!("{name}.json")),
        sub.join(format!("{name}.json")),
    ]
}

/// Find plugin `name` in `dirs` (see the module doc). `Ok(None)`: not found.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<Option<Found>, PluginError> {
    validate_name(name)?;
    for dir in dirs {
        for path in candidates(dir, name) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let addr = match ext {
                "sock" => {
                    use std::os::unix::fs::FileTypeExt;
                    if !meta.file_type().is_socket() {
                        continue;
                    }
                    Addr::Unix(path.clone())
                }
                "spec" | "json" => {
                    let content =
                        std::fs::read_to_string(&path).map_err(|e| PluginError::Spec {
                            plugin: name.to_string(),
                            message: format!("cannot read {}: {e}", path.display()),
                        })?;
                    let parsed = if ext == "spec" {
                        parse_spec(&content)
                    } else {
                        parse_json_spec(&content)
                    };
                    parsed.map_err(|message| PluginError::Spec {
                        plugin: name.to_string(),
                        message: format!("{}: {message}", path.display()),
                    })?
                }
                _ => continue,
            };
            return Ok(Some(Found { addr, source: path }));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_urls() {
        assert_eq!(
            parse_spec("unix:///run/p/p.sock\n").unwrap(),
            Addr::Unix("/run/p/p.sock".into())
        );
        assert_eq!(
            parse_spec(" tcp://127.0.0.1:8080 ").unwrap(),
            Addr::Tcp("127.0.0.1:8080".into())
        );
        assert!(parse_spec("unix://relative").is_err());
        assert!(parse_spec("tcp://nohost").is_err());
        assert!(parse_spec("https://h:1").unwrap_err().contains("TLS"));
        assert!(parse_spec("ftp://x").is_err());
    }

    #[test]
    fn json_specs() {
        assert_eq!(
            parse_json_spec(r#"{"Name":"p","Addr":"tcp://10.0.0.1:9000"}"#).unwrap(),
            Addr::Tcp("10.0.0.1:9000".into())
        );
        assert_eq!(
            parse_json_spec(r#"{"Name":"p","Addr":"unix:///x.sock","TLSConfig":null}"#).unwrap(),
            Addr::Unix("/x.sock".into())
        );
        let tls = parse_json_spec(
            r#"{"Name":"p","Addr":"tcp://h:1","TLSConfig":{"CAFile":"/ca.pem","InsecureSkipVerify":false}}"#,
        )
        .unwrap_err();
        assert!(tls.contains("TLSConfig is not supported"), "{tls}");
        assert!(parse_json_spec("not json")
            .unwrap_err()
            .contains("not a plugin spec"));
        assert!(parse_json_spec(r#"{"Name":"p"}"#)
            .unwrap_err()
            .contains("Addr"));
    }

    #[test]
    fn names_stay_in_the_directory() {
        assert!(validate_name("weave").is_ok());
        assert!(validate_name("my-plugin.v2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "x y"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_order() {
        let root = std::env::temp_dir().join(format!("tapnet-discovery-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(a.join("p")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let dirs = vec![a.clone(), b.clone()];
        assert_eq!(find("p", &dirs).unwrap(), None);
        // A spec in the second directory.
        std::fs::write(b.join("p.spec"), "tcp://127.0.0.1:1\n").unwrap();
        assert_eq!(
            find("p", &dirs).unwrap().unwrap().addr,
            Addr::Tcp("127.0.0.1:1".into())
        );
        // A json in the first directory's subdirectory wins over the second directory.
        std::fs::write(a.join("p/p.json"), r#"{"Addr":"unix:///j.sock"}"#).unwrap();
        assert_eq!(
            find("p", &dirs).unwrap().unwrap().addr,
            Addr::Unix("/j.sock".into())
        );
        // A .spec beats a .json in the same directory.
        std::fs::write(a.join("p.spec"), "unix:///s.sock").unwrap();
        assert_eq!(
            find("p", &dirs).unwrap().unwrap().addr,
            Addr::Unix("/s.sock".into())
        );
        // A socket beats every spec; a plain file named .sock is not a socket.
        std::fs::write(a.join("p.sock"), "").unwrap();
        assert_eq!(
            find("p", &dirs).unwrap().unwrap().addr,
            Addr::Unix("/s.sock".into())
        );
        std::fs::remove_file(a.join("p.sock")).unwrap();
        let sock = a.join("p/p.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let found = find("p", &dirs).unwrap().unwrap();
        assert_eq!(found.addr, Addr::Unix(sock.clone()));
        assert_eq!(found.source, sock);
        // A broken spec is an error naming the file, not a skip.
        std::fs::write(b.join("q.json"), "{").unwrap();
        let e = find("q", &dirs).unwrap_err().to_string();
        assert!(e.contains("q.json"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
