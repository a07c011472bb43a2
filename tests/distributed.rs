//! Several processes as one MLX group: `mlxi launch -n N` (ring backend on loopback), `world()`,
//! the collectives and their failure modes (a failing, killed or missing rank ends the job with
//! an error in bounded time). Expected values are plain arithmetic on the ranks' inputs.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{mlxi, scratch, write, Run};

/// A test's whole job must end within this (a hang is a failure, not a stuck CI).
const LIMIT: Duration = Duration::from_secs(60);

/// `mlxi ARGS...` in `dir` with the distributed variables of this test process removed.
fn command(home: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = mlxi(home);
    c.current_dir(dir)
        .args(args)
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .env_remove("MLXI_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` up to `limit`; past it, kills it (its ranks die with it) and fails.
fn finish(mut child: Child, limit: Duration) -> (Run, Duration) {
    let start = Instant::now();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let run = Run {
                code: status.code(),
                stdout: reader.join().unwrap(),
                stderr: err_reader.join().unwrap(),
            };
            return (run, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?}: stdout {:?} stderr {:?}",
                reader.join(),
                err_reader.join()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(dir: &Path, args: &[&str]) -> Run {
    let home = scratch();
    let child = command(home.path(), dir, args).spawn().expect("mlxi runs");
    finish(child, LIMIT).0
}

/// Rank 0's lines (unprefixed) and rank K's lines (prefix removed).
fn lines_of(stdout: &str, rank: usize) -> Vec<String> {
    let prefix = format!("[rank {rank}] ");
    stdout
        .lines()
        .filter_map(|l| {
            if rank == 0 {
                (!l.starts_with("[rank ")).then(|| l.to_string())
            } else {
                l.strip_prefix(&prefix).map(str::to_string)
            }
        })
        .collect()
}

const COLLECTIVES: &str = r#"
let w = world();
print(`world ${w.rank} ${w.size} ${w.backend}`);
// rank r contributes [r + 1, 10 r]
let s = all_sum(tensor([1.0 * (w.rank + 1), 10.0 * w.rank]));
print(`sum ${s.to_array()}`);
// rank r contributes r + 1 rows [r, k] (an uneven split)
let rows = [];
for k in 0..(w.rank + 1) { rows.push([1.0 * w.rank, 1.0 * k]); }
let g = all_gather(tensor(rows));
print(`gather ${g.shape} ${g.to_array()}`);
let v = gather(#{rank: w.rank, tag: "r" + w.rank, xs: [w.rank, 0.5]});
print(`values ${v.map(|m| m.tag)} ${v.map(|m| m.xs[0])}`);
print(`share ${share([10, 11, 12, 13, 14])}`);
"#;

/// The lines rank `rank` of `n` must print for [`COLLECTIVES`], computed here independently.
fn expected(rank: usize, n: usize) -> Vec<String> {
    let sum0: usize = (1..=n).sum();
    let sum1: usize = (0..n).map(|r| 10 * r).sum();
    let mut rows = Vec::new();
    for r in 0..n {
        for k in 0..=r {
            rows.push(format!("[{r}.0, {k}.0]"));
        }
    }
    let tags: Vec<String> = (0..n).map(|r| format!("\"r{r}\"")).collect();
    let firsts: Vec<String> = (0..n).map(|r| r.to_string()).collect();
    let items = [10, 11, 12, 13, 14];
    let (base, extra) = (items.len() / n, items.len() % n);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    let share: Vec<String> = items[start..start + len]
        .iter()
        .map(|i| i.to_string())
        .collect();
    let backend = if n == 1 { "none" } else { "ring" };
    vec![
        format!("world {rank} {n} {backend}"),
        format!("sum [{sum0}.0, {sum1}.0]"),
        format!("gather [{}, 2] [{}]", rows.len(), rows.join(", ")),
        format!("values [{}] [{}]", tags.join(", "), firsts.join(", ")),
        format!("share [{}]", share.join(", ")),
    ]
}

#[test]
fn collectives_on_two_and_three_processes() {
    let dir = scratch();
    write(dir.path(), "c.rhai", COLLECTIVES);
    for n in [2usize, 3] {
        let r = run(dir.path(), &["launch", "-n", &n.to_string(), "c.rhai"]);
        r.ok();
        for rank in 0..n {
            assert_eq!(
                lines_of(&r.stdout, rank),
                expected(rank, n),
                "rank {rank} of {n}; stdout:\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn one_process_is_a_world_of_one() {
    let dir = scratch();
    write(dir.path(), "c.rhai", COLLECTIVES);
    for args in [&["run", "c.rhai"][..], &["launch", "-n", "1", "c.rhai"]] {
        let r = run(dir.path(), args);
        assert_eq!(
            r.ok().lines().map(str::to_string).collect::<Vec<_>>(),
            expected(0, 1)
        );
    }
}

#[test]
fn launch_runs_code_and_sets_values() {
    let dir = scratch();
    write(dir.path(), "a.rhai", "print(`${world().rank}:${args.k}`);");
    let r = run(dir.path(), &["launch", "-n", "2", "a.rhai", "--set", "k=7"]);
    let mut lines: Vec<&str> = r.ok().lines().collect();
    lines.sort();
    assert_eq!(lines, ["0:7", "[rank 1] 1:7"]);
    let r = run(dir.path(), &["launch", "-n", "2", "-e", "world().size"]);
    let mut lines: Vec<&str> = r.ok().lines().collect();
    lines.sort();
    assert_eq!(lines, ["2", "[rank 1] 2"]);
}

#[test]
fn mismatched_tensors_are_an_error_on_every_rank() {
    let dir = scratch();
    write(
        dir.path(),
        "m.rhai",
        "let w = world(); all_sum(tensor(if w.rank == 1 { [1.0, 2.0] } else { [1.0] }));",
    );
    let r = run(dir.path(), &["launch", "-n", "2", "m.rhai"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("all_sum: every rank needs the same shape and dtype"),
        "{}",
        r.stderr
    );
    let r = run(
        dir.path(),
        &[
            "launch",
            "-n",
            "2",
            "-e",
            "all_gather(if world().rank == 0 { zeros([2, 3]) } else { zeros([2, 4]) })",
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("same shape after the first axis"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_failing_rank_stops_the_others() {
    let dir = scratch();
    // Rank 0 waits in a collective that rank 1 never joins.
    write(
        dir.path(),
        "f.rhai",
        "if world().rank == 1 { throw \"rank 1 gives up\" } all_sum(tensor([1.0]));",
    );
    let home = scratch();
    let child = command(home.path(), dir.path(), &["launch", "-n", "3", "f.rhai"])
        .spawn()
        .unwrap();
    let (r, took) = finish(child, LIMIT);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("rank 1 gives up"), "{}", r.stderr);
    // Rank 1 is named; its peers may fail too (their socket to it closes) and be named after.
    let report = r.stderr.lines().find(|l| l.starts_with("mlxi launch: "));
    assert!(
        report.is_some_and(|l| l.contains("rank 1 exited with status 1")),
        "{}",
        r.stderr
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// The pids of `parent`'s children whose environment has `MLX_RANK=rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("MLX_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the fields after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job() {
    let dir = scratch();
    // Every rank joins, then rank 0 waits in a collective while rank 1 is busy until killed.
    write(
        dir.path(),
        "k.rhai",
        "let w = world(); print(`ready ${w.rank}`); \
         if w.rank == 1 { let x = 0; loop { x += 1; } } all_sum(tensor([1.0]));",
    );
    let home = scratch();
    let child = command(home.path(), dir.path(), &["launch", "-n", "2", "k.rhai"])
        .spawn()
        .unwrap();
    let launcher = child.id();
    let start = Instant::now();
    let pid = loop {
        if let Some(pid) = rank_pid(launcher, 1) {
            break pid;
        }
        assert!(start.elapsed() < LIMIT, "rank 1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let it join the group, then kill it.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: a plain kill(2) of a process this test's launcher started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let (r, _) = finish(child, LIMIT);
    assert_eq!(r.code, Some(128 + 9), "{}", r.stderr);
    assert!(
        r.stderr.contains("rank 1 was killed by signal 9"),
        "{}",
        r.stderr
    );
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn a_missing_peer_times_out() {
    // One rank of a two-rank ring whose peer never starts: without a launcher watching, the
    // init deadline ends it.
    let dir = scratch();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hosts = write(
        dir.path(),
        "hosts.json",
        &format!("[[\"127.0.0.1:{port}\"], [\"127.0.0.1:{other}\"]]"),
    );
    let home = scratch();
    let child = command(home.path(), dir.path(), &["-e", "world()"])
        .env("MLX_RANK", "0")
        .env("MLX_HOSTFILE", &hosts)
        .env("MLXI_DIST_INIT_TIMEOUT", "2")
        .spawn()
        .unwrap();
    let (r, took) = finish(child, LIMIT);
    assert_eq!(r.code, Some(124), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("rank 0: joining the group: no answer from the other ranks after 2 s"),
        "{}",
        r.stderr
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn bad_launch_arguments_are_errors() {
    let dir = scratch();
    write(dir.path(), "a.rhai", "1");
    let r = run(dir.path(), &["launch", "-n", "0", "a.rhai"]);
    assert!(
        r.failed().contains("-n 0: expected 1 to 64 processes"),
        "{}",
        r.stderr
    );
    let r = run(
        dir.path(),
        &["launch", "-n", "2", "--port", "65535", "a.rhai"],
    );
    assert!(r.failed().contains("within 1024..65535"), "{}", r.stderr);
}
