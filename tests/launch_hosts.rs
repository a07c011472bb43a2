//! `mlxi launch --hostfile`: ranks on the hosts of an mlx.launch host file, started over ssh.
//!
//! A stand-in ssh (a shell script written here) checks the arguments mlxi gives ssh, logs the
//! host and runs the command on this machine as sshd would (the login shell's `-c`); every
//! "host" listens on 127.0.0.1. A job on 2 and 3 hosts must print what the same script prints
//! under a local `mlxi launch -n N`; a bad host file must be an error that starts nothing; a
//! failing or unreachable rank must end the job, named, in bounded time.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ranks::{command, finish, lines_of};
use common::{scratch, write, Run};

/// A test's whole job must end within this (a hang is a failure, not a stuck CI).
const LIMIT: Duration = Duration::from_secs(60);

const STUB_SSH: &str = r#"#!/bin/sh
# A stand-in for ssh: the arguments must be `-o BatchMode=yes -o ConnectTimeout=N HOST COMMAND`.
log="$(dirname "$0")/ssh.log"
if [ "$#" -ne 6 ] || [ "$1" != -o ] || [ "$2" != BatchMode=yes ] || [ "$3" != -o ]; then
  echo "stub ssh: unexpected arguments: $*" >&2; exit 90
fi
case "$4" in ConnectTimeout=[0-9]*) ;; *) echo "stub ssh: no ConnectTimeout" >&2; exit 91;; esac
# The host "down" cannot be reached: ssh's own status.
[ "$5" = down ] && exit 255
case "$6" in kill*) echo "$5 kill" >> "$log";; *) echo "$5" >> "$log";; esac
exec sh -c "$6"
"#;

/// Writes the stand-in ssh into `dir`; its log is `dir/ssh.log`.
fn stub_ssh(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = write(dir, "ssh", STUB_SSH);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The hosts the stand-in ssh was asked to reach, sorted (none when it never ran).
fn ssh_log(dir: &Path) -> Vec<String> {
    let mut hosts: Vec<String> = std::fs::read_to_string(dir.join("ssh.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    hosts.sort();
    hosts
}

/// A host file of `names`, each listening on 127.0.0.1.
fn host_file(dir: &Path, names: &[&str]) -> PathBuf {
    let hosts: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"ssh": n, "ips": ["127.0.0.1"]}))
        .collect();
    write(dir, "hosts.json", &serde_json::to_string(&hosts).unwrap())
}

/// The first of `n` consecutive ports that were free a moment ago.
fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let first = l.local_addr().unwrap().port();
        if first > u16::MAX - n {
            continue;
        }
        let rest: Vec<_> = (1..n)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return first;
        }
    }
    panic!("no {n} consecutive free ports");
}

fn run(dir: &Path, args: &[&str]) -> (Run, Duration) {
    let home = scratch();
    finish(
        command(home.path(), dir, args).spawn().expect("mlxi runs"),
        LIMIT,
    )
}

/// `mlxi launch --hostfile hosts.json --ssh STUB --port P ARGS...` in `dir`.
fn run_hosts(dir: &Path, ranks: u16, args: &[&str]) -> (Run, Duration) {
    let ssh = dir.join("ssh");
    let port = free_ports(ranks).to_string();
    let mut all = vec![
        "launch",
        "--hostfile",
        "hosts.json",
        "--ssh",
        ssh.to_str().unwrap(),
        "--port",
        &port,
    ];
    all.extend_from_slice(args);
    run(dir, &all)
}

const COLLECTIVES: &str = r#"
let w = world();
print(`world ${w.rank} ${w.size} ${w.backend}`);
let s = all_sum(tensor([1.0 * (w.rank + 1), 10.0 * w.rank]));
print(`sum ${s.to_array()}`);
let rows = [];
for k in 0..(w.rank + 1) { rows.push([1.0 * w.rank, 1.0 * k]); }
let g = all_gather(tensor(rows));
print(`gather ${g.shape} ${g.to_array()}`);
print(`values ${gather(#{tag: "r" + w.rank, k: args.k}).map(|m| m.tag + m.k)}`);
"#;

/// The same collectives on `names` (over the stand-in ssh) and on a local `-n N` launch.
fn same_as_local(names: &[&str], per_host: Option<&str>, expect_ssh: &[&str]) {
    let dir = scratch();
    stub_ssh(dir.path());
    write(dir.path(), "c.rhai", COLLECTIVES);
    host_file(dir.path(), names);
    let n = names.len() * per_host.map_or(1, |p| p.parse::<usize>().unwrap());
    let (local, _) = run(
        dir.path(),
        &["launch", "-n", &n.to_string(), "c.rhai", "--set", "k=7"],
    );
    local.ok();
    let mut args = vec!["c.rhai", "--set", "k=7"];
    if let Some(p) = per_host {
        args.splice(0..0, ["-n", p]);
    }
    let (hosts, _) = run_hosts(dir.path(), n as u16, &args);
    hosts.ok();
    for rank in 0..n {
        let want = lines_of(&local.stdout, rank);
        assert_eq!(want.len(), 4, "rank {rank}: {}", local.stdout);
        assert_eq!(want[0], format!("world {rank} {n} ring"));
        assert_eq!(
            lines_of(&hosts.stdout, rank),
            want,
            "rank {rank} of {names:?}; stdout:\n{}\nstderr:\n{}",
            hosts.stdout,
            hosts.stderr
        );
    }
    assert_eq!(ssh_log(dir.path()), expect_ssh);
}

#[test]
fn two_and_three_hosts_give_a_local_launchs_figures() {
    same_as_local(&["alpha", "beta"], None, &["alpha", "beta"]);
    // The host 127.0.0.1 runs here without ssh, as under mlx.launch.
    same_as_local(
        &["alpha", "127.0.0.1", "me@gamma.lan"],
        None,
        &["alpha", "me@gamma.lan"],
    );
}

#[test]
fn dash_n_starts_that_many_ranks_on_each_host() {
    same_as_local(&["alpha"], Some("2"), &["alpha", "alpha"]);
}

#[test]
fn bad_host_files_are_errors_that_start_nothing() {
    let dir = scratch();
    stub_ssh(dir.path());
    write(dir.path(), "c.rhai", COLLECTIVES);
    let huge = format!("[{}]", " ".repeat(2 << 20));
    let cases: [(&str, &str); 8] = [
        ("[{\"ssh\": \"alpha\", \"ips\": [\"127.0.0.1\"]", "unexpected end of file at line 1"),
        ("[]", "no hosts"),
        ("[{\"ssh\": \"alpha\", \"ips\": [\"127.0.0.300\"]}]", "hosts[0].ips[0]: not an IPv4 address"),
        (&huge, "larger than 1024 KiB"),
        ("[{\"ssh\": \"a;touch pwned\", \"ips\": [\"127.0.0.1\"]}]", "hosts[0].ssh: not a host name"),
        (
            "[{\"ssh\": \"alpha\", \"ips\": [\"127.0.0.1\"]}, {\"ssh\": \"$(touch pwned)\", \"ips\": [\"127.0.0.1\"]}]",
            "hosts[1].ssh: not a host name",
        ),
        ("[{\"ssh\": \"alpha\"}, {\"ssh\": \"beta\"}]", "hosts[0] has no \"ips\""),
        (
            "{\"backend\": \"jaccl\", \"hosts\": [{\"ssh\": \"alpha\", \"ips\": [\"127.0.0.1\"]}]}",
            "asks for the jaccl backend: mlxi launch starts ring jobs only; start this one with \
             `mlx.launch",
        ),
    ];
    for (text, want) in cases {
        write(dir.path(), "hosts.json", text);
        let (r, _) = run_hosts(dir.path(), 2, &["c.rhai"]);
        let err = r.failed();
        assert!(err.contains("hosts.json"), "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(
            !err.contains("pwned") && !err.contains("127.0.0.300"),
            "{err}"
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert_eq!(ssh_log(dir.path()), Vec::<String>::new(), "{want}");
        assert!(!dir.path().join("pwned").exists());
    }
    // Good host file, bad options.
    host_file(dir.path(), &["alpha", "beta"]);
    let ssh = dir.path().join("ssh");
    let ssh = ssh.to_str().unwrap();
    for (args, want) in [
        (
            &["--port", "65535"][..],
            "--port 65535: the ranks need ports 65535 to 65536",
        ),
        (
            &["-n", "40"],
            "-n 40 on 2 host(s): expected 1 to 64 processes in all",
        ),
        (
            &["--backend", "tcp"],
            "--backend: expected one of ring, jaccl",
        ),
        (&["--env", "A B=1"], "--env: not KEY=VALUE"),
    ] {
        let mut all = vec!["launch", "--hostfile", "hosts.json", "--ssh", ssh];
        all.extend_from_slice(args);
        all.push("c.rhai");
        let (r, _) = run(dir.path(), &all);
        assert!(r.failed().contains(want), "want {want:?} in:\n{}", r.stderr);
        assert_eq!(ssh_log(dir.path()), Vec::<String>::new(), "{want}");
    }
}

#[test]
fn a_failing_remote_rank_ends_the_job_naming_it() {
    let dir = scratch();
    stub_ssh(dir.path());
    // Ranks 0 and 2 are busy until stopped.
    write(
        dir.path(),
        "f.rhai",
        "if world().rank == 1 { throw \"rank 1 gives up\" } let x = 0; loop { x += 1; }",
    );
    host_file(dir.path(), &["alpha", "beta", "gamma"]);
    let (r, took) = run_hosts(dir.path(), 3, &["f.rhai"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("[rank 1] "), "{}", r.stderr);
    assert!(r.stderr.contains("rank 1 gives up"), "{}", r.stderr);
    let report = r.stderr.lines().find(|l| l.starts_with("mlxi launch: "));
    assert!(
        report.is_some_and(
            |l| l.contains("rank 1 on beta exited with status 1; stopping the other 2 rank(s)")
        ),
        "{}",
        r.stderr
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    // They were stopped on their hosts too, through ssh.
    assert_eq!(
        ssh_log(dir.path()),
        ["alpha", "alpha kill", "beta", "gamma", "gamma kill"]
    );
    std::fs::remove_file(dir.path().join("ssh.log")).unwrap();

    // A host ssh cannot reach: rank 0 would wait for it in joining the group.
    host_file(dir.path(), &["alpha", "down"]);
    write(dir.path(), "c.rhai", COLLECTIVES);
    let (r, took) = run_hosts(dir.path(), 2, &["c.rhai"]);
    assert_eq!(r.code, Some(255), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "rank 1 on down exited with status 255 (ssh could not reach the host or lost it)"
        ),
        "{}",
        r.stderr
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}
