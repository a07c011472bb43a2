//! `mlx.launch` host files, read strictly: the machines of an `mlxi launch --hostfile` job.
//!
//! The format is mlx.launch's (`mlx/_distributed_utils/common.py`, `Hostfile.from_file`): a JSON
//! list of hosts, `[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, ...]`, or a map
//! `{"backend": "ring", "envs": ["KEY=VALUE", ...], "hosts": [...]}`. Each host is one rank, in
//! order; `ssh` is what ssh connects to, `ips` the addresses the ring backend listens on (one
//! port per rank and IP), `rdma` the jaccl devices (accepted, unused by the ring backend).
//!
//! A host file is untrusted data that ends up in ssh command lines: its size, the number of hosts,
//! IPs and variables are bounded; host names are plain DNS names or IP addresses (an optional
//! `user@`), IPs are IPv4 addresses, variable names are shell identifiers; anything else is an
//! error naming the entry and the field, never repeating the file's text.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// The largest host file read, in bytes.
pub const MAX_BYTES: u64 = 1 << 20;
/// The most IPs one host lists.
pub const MAX_IPS: usize = 16;
/// The most variables (`envs`) a host file sets.
pub const MAX_ENVS: usize = 64;
/// The longest `KEY=VALUE` of `envs`, in bytes.
pub const MAX_ENV_BYTES: usize = 4096;

/// One host of a host file.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// What ssh connects to: a host name or IP, possibly `user@host`.
    pub ssh: String,
    /// The addresses this host's rank listens on for the ring backend.
    pub ips: Vec<Ipv4Addr>,
}

/// A parsed host file.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFile {
    /// One rank per host, in order.
    pub hosts: Vec<Host>,
    /// The backend the file asks for (`""` when it names none).
    pub backend: String,
    /// Variables to set on every rank, as (name, value).
    pub envs: Vec<(String, String)>,
}

/// Reads and checks the host file at `path`; `max_hosts` bounds the number of hosts.
pub fn read(path: &Path, max_hosts: usize) -> Result<HostFile> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(bad(
            path,
            format!(
                "larger than {} KiB; a host file lists hosts",
                MAX_BYTES >> 10
            ),
        ));
    }
    parse(&bytes, max_hosts).map_err(|why| bad(path, why))
}

fn bad(path: &Path, why: String) -> Error {
    Error::Invalid(format!("host file {}: {why}", path.display()))
}

/// Checks a host file's bytes; the error says what is wrong without quoting the file.
pub fn parse(bytes: &[u8], max_hosts: usize) -> std::result::Result<HostFile, String> {
    let data: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's messages may quote the text; keep only the kind and the place.
        let kind = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of file",
            serde_json::error::Category::Io => "unreadable",
            _ => "not valid JSON",
        };
        format!("{kind} at line {} column {}", e.line(), e.column())
    })?;
    let (hosts, backend, envs) = match &data {
        Value::Array(hosts) => (hosts, String::new(), Vec::new()),
        Value::Object(map) => {
            if map
                .keys()
                .any(|k| !["hosts", "backend", "envs"].contains(&k.as_str()))
            {
                return Err("unknown top-level field (expected hosts, backend, envs)".into());
            }
            let Some(Value::Array(hosts)) = map.get("hosts") else {
                return Err("\"hosts\" must be a list of hosts".into());
            };
            (
                hosts,
                backend_of(map.get("backend"))?,
                envs_of(map.get("envs"))?,
            )
        }
        _ => return Err("expected a list of hosts or a map with \"hosts\"".into()),
    };
    if hosts.is_empty() {
        return Err("no hosts".into());
    }
    if hosts.len() > max_hosts {
        return Err(format!(
            "{} hosts; one launch starts at most {max_hosts}",
            hosts.len()
        ));
    }
    let hosts = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| host_of(i, h))
        .collect::<std::result::Result<_, _>>()?;
    Ok(HostFile {
        hosts,
        backend,
        envs,
    })
}

fn host_of(i: usize, h: &Value) -> std::result::Result<Host, String> {
    let Value::Object(map) = h else {
        return Err(format!(
            "hosts[{i}]: expected a map with \"ssh\" and \"ips\""
        ));
    };
    if map
        .keys()
        .any(|k| !["ssh", "ips", "rdma"].contains(&k.as_str()))
    {
        return Err(format!(
            "hosts[{i}]: unknown field (expected ssh, ips, rdma)"
        ));
    }
    let Some(Value::String(ssh)) = map.get("ssh") else {
        return Err(format!("hosts[{i}].ssh: expected a host name (a string)"));
    };
    if !ssh_target_ok(ssh) {
        return Err(format!(
            "hosts[{i}].ssh: not a host name (DNS name or IP address, optionally user@; \
             letters, digits, '.', '-', '_')"
        ));
    }
    let ips = match map.get("ips") {
        None => Vec::new(),
        Some(Value::Array(ips)) if ips.len() <= MAX_IPS => ips
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                ip.as_str()
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                    .ok_or_else(|| {
                        format!(
                            "hosts[{i}].ips[{j}]: not an IPv4 address (the ring backend \
                             takes IP:PORT)"
                        )
                    })
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(format!("hosts[{i}].ips: more than {MAX_IPS} addresses"));
        }
        Some(_) => return Err(format!("hosts[{i}].ips: expected a list of IP addresses")),
    };
    match map.get("rdma") {
        None | Some(Value::Array(_)) => {}
        Some(_) => return Err(format!("hosts[{i}].rdma: expected a list")),
    }
    Ok(Host {
        ssh: ssh.clone(),
        ips,
    })
}

fn backend_of(v: Option<&Value>) -> std::result::Result<String, String> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) if BACKENDS.contains(&s.as_str()) || s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!(
            "\"backend\": expected one of {}",
            BACKENDS.join(", ")
        )),
    }
}

/// The backends mlx.launch knows.
pub const BACKENDS: [&str; 5] = ["ring", "jaccl", "jaccl-ring", "mpi", "nccl"];

fn envs_of(v: Option<&Value>) -> std::result::Result<Vec<(String, String)>, String> {
    let items = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_ENVS => items,
        Some(Value::Array(_)) => return Err(format!("\"envs\": more than {MAX_ENVS} variables")),
        Some(_) => return Err("\"envs\": expected a list of \"KEY=VALUE\" strings".into()),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.as_str()
                .ok_or_else(|| format!("envs[{i}]: expected a \"KEY=VALUE\" string"))
                .and_then(|s| env_var(s).map_err(|why| format!("envs[{i}]: {why}")))
        })
        .collect()
}

/// Splits `KEY=VALUE` (a variable for the ranks), checking the name and the size.
pub fn env_var(s: &str) -> std::result::Result<(String, String), String> {
    if s.len() > MAX_ENV_BYTES {
        return Err(format!("longer than {MAX_ENV_BYTES} bytes"));
    }
    if s.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let (key, value) = s.split_once('=').unwrap_or((s, ""));
    let mut chars = key.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ident {
        return Err("not KEY=VALUE with KEY a variable name (letters, digits, '_')".into());
    }
    Ok((key.to_string(), value.to_string()))
}

/// True for `host`, `user@host` with a plain DNS name or IP address: nothing a shell or ssh
/// would read as syntax or an option.
pub fn ssh_target_ok(s: &str) -> bool {
    let host = match s.split_once('@') {
        Some((user, host)) => {
            let user_ok = !user.is_empty()
                && user.len() <= 64
                && !user.starts_with('-')
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !user_ok {
                return false;
            }
            host
        }
        None => s,
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_parse() {
        let list = br#"[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, {"ssh": "me@mac2", "ips": ["10.0.0.2", "10.0.1.2"]}]"#;
        let f = parse(list, 8).unwrap();
        assert_eq!(f.hosts.len(), 2);
        assert_eq!(f.hosts[1].ssh, "me@mac2");
        assert_eq!(f.hosts[1].ips.len(), 2);
        let map = br#"{"backend": "ring", "envs": ["A=1", "B_2=x y"], "hosts": [{"ssh": "10.0.0.1", "ips": ["10.0.0.1"], "rdma": []}]}"#;
        let f = parse(map, 8).unwrap();
        assert_eq!(f.backend, "ring");
        assert_eq!(
            f.envs,
            [("A".into(), "1".into()), ("B_2".into(), "x y".into())]
        );
    }

    #[test]
    fn bad_files_name_the_field_and_never_quote_it() {
        for (text, want) in [
            (&b"[{\"ssh\": \"a\""[..], "unexpected end of file at line 1"),
            (b"{\"hosts\": 3}", "\"hosts\" must be a list"),
            (b"[]", "no hosts"),
            (
                b"[{\"ssh\": \"a;rm -rf x\", \"ips\": []}]",
                "hosts[0].ssh: not a host name",
            ),
            (
                b"[{\"ssh\": \"-oProxyCommand=x\"}]",
                "hosts[0].ssh: not a host name",
            ),
            (
                b"[{\"ssh\": \"a\", \"ips\": [\"1.2.3\"]}]",
                "hosts[0].ips[0]: not an IPv4",
            ),
            (b"[{\"ssh\": \"a\", \"cmd\": 1}]", "hosts[0]: unknown field"),
            (
                b"{\"envs\": [\"A B=1\"], \"hosts\": [{\"ssh\": \"a\"}]}",
                "envs[0]: not KEY=VALUE",
            ),
            (
                b"{\"backend\": \"tcp$(x)\", \"hosts\": [{\"ssh\": \"a\"}]}",
                "\"backend\": expected one of",
            ),
        ] {
            let err = parse(text, 8).unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(
                !err.contains("rm -rf") && !err.contains("$(x)") && !err.contains("ProxyCommand")
            );
        }
        let many = format!("[{}]", [r#"{"ssh": "a"}"#; 9].join(","));
        assert!(parse(many.as_bytes(), 8)
            .unwrap_err()
            .contains("9 hosts; one launch starts at most 8"));
    }

    #[test]
    fn ssh_targets() {
        for ok in [
            "mac1",
            "mac1.local",
            "me@mac-2.lan",
            "10.0.0.1",
            "::1",
            "node_3",
        ] {
            assert!(ssh_target_ok(ok), "{ok}");
        }
        for bad in [
            "", "-p", "a b", "a;b", "a$(b)", "a`b`", "@a", "a@", "a..b", "a/b", "x@y@z", "a\nb",
        ] {
            assert!(!ssh_target_ok(bad), "{bad:?}");
        }
    }
}
