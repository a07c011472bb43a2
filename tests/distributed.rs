//! Several processes as one MLX group: `mlxi launch -n N` (ring backend on loopback), `world()`,
//! the collectives and their failure modes (a failing, killed or missing rank ends the job with
//! an error in bounded time). Expected values are plain arithmetic on the ranks' inputs.
//!
//! Data-parallel studies (capture, probe, sweep) on the tiny random-weight llama fixture: the
//! same script on 2 and 3 processes gives the figures one process gives (itself checked against
//! mlx-lm by the parity tests), and only rank 0 writes files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ranks::{command, finish, lines_of};
use common::{json_max_diff as max_diff, scratch, write, Run};

/// A test's whole job must end within this (a hang is a failure, not a stuck CI).
const LIMIT: Duration = Duration::from_secs(60);

fn run(dir: &Path, args: &[&str]) -> Run {
    let home = scratch();
    let child = command(home.path(), dir, args).spawn().expect("mlxi runs");
    finish(child, LIMIT).0
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

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/llama");

/// Captures 7 prompts (every resid_post, last and all positions) and trains a probe; rank 0
/// saves everything as JSON.
const STUDY: &str = r#"
let m = load(args.model);
let pos = ["a b c", "a a b c d", "b c", "c c c a", "a b", "d d a b c"];
let neg = ["d c b a", "c b", "b b b d a", "d d d", "c a", "a d c b b", "b a"];
let texts = pos + neg;
let c = capture(m, texts);
let all = capture(m, texts, #{positions: "all", points: ["blocks.1.hook_resid_post"]});
let p = probe(m, pos, neg, #{layers: "all", folds: 3});
let out = #{
    last: keys(c).map(|k| c[k].to_array()),
    all: all["blocks.1.hook_resid_post"].map(|t| t.to_array()),
    n: c.n,
    ids: c.ids,
    accuracy: p.accuracy,
    direction: p.direction(1).vector.to_array(),
};
save_json(out, args.out + "/study.json");
print(`saved on rank ${world().rank}`);
"#;

fn study(n: usize) -> serde_json::Value {
    let dir = scratch();
    write(dir.path(), "s.rhai", STUDY);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    let model = format!("model={FIXTURE}");
    let outset = format!("out={out_s}");
    let args: Vec<&str> = if n == 1 {
        vec!["run", "s.rhai", "--set", &model, "--out", &out_s]
    } else {
        vec![
            "launch",
            "-n",
            if n == 2 { "2" } else { "3" },
            "s.rhai",
            "--set",
            &model,
            "--out",
            &out_s,
        ]
    };
    let _ = outset;
    let r = run(dir.path(), &args);
    r.ok();
    assert_eq!(r.stdout.matches("saved on rank").count(), n, "{}", r.stdout);
    // One file, written by rank 0 only (the others' writes go to their scratch folders).
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files, ["study.json"]);
    serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap()
}

#[test]
fn capture_and_probe_give_one_process_figures_on_two_and_three() {
    let one = study(1);
    assert_eq!(one["n"], 13);
    for n in [2, 3] {
        let many = study(n);
        let d = max_diff(&one, &many, "study");
        assert!(d < 1e-4, "{n} processes differ from one by {d}");
        assert_eq!(one["accuracy"], many["accuracy"], "{n} processes");
    }
}

#[test]
fn a_sweep_writes_one_results_file_with_one_process_cells() {
    let script = r#"
import "std/sweep" as sweep;
let m = load(args.model);
let d = direction(m, ["a b c", "a a b"], ["d c b", "c c d"], #{layer: 1});
let r = sweep::run(m, d, #{alphas: [0.0, 1.0, 4.0], layers: [0, 1], prompts: ["a b", "c d a"],
                            metric: |outputs| sweep::mention_rate(outputs, ["a"]),
                            max_tokens: 4, chat: false, out: args.out});
print(`best ${r.best.layer} ${r.best.alpha}`);
"#;
    let mut results = Vec::new();
    for n in ["1", "2"] {
        let dir = scratch();
        write(dir.path(), "sw.rhai", script);
        let out = dir.path().join("out");
        let out_s = out.display().to_string();
        let model = format!("model={FIXTURE}");
        let r = run(
            dir.path(),
            &[
                "launch", "-n", n, "sw.rhai", "--set", &model, "--out", &out_s,
            ],
        );
        r.ok();
        let mut files: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| !f.starts_with('.'))
            .collect();
        files.sort();
        assert_eq!(files, ["sweep.json", "sweep.svg"], "{n} processes");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap())
                .unwrap();
        assert_eq!(v["cells"].as_array().unwrap().len(), 6);
        results.push(v);
    }
    let d = max_diff(&results[0]["cells"], &results[1]["cells"], "cells");
    assert!(d < 1e-3, "cells differ by {d}");
    assert_eq!(results[0]["best"], results[1]["best"]);
}

#[test]
fn capture_runs_each_rank_on_its_share_only() {
    let script = r#"
let m = load(args.model);
let rows = 0;
hook(m, "blocks.0.hook_resid_post", |x| { rows += x.shape[0]; });
let c = capture(m, ["a", "b", "c", "d", "e", "f", "a b"], #{batch_size: 2});
clear_hooks(m);
let alone = locally(|| capture(m, ["a", "b", "c"]));
print(`rows ${rows} of ${c.n} ${alone.n}`);
"#;
    let dir = scratch();
    write(dir.path(), "r.rhai", script);
    let model = format!("model={FIXTURE}");
    for (n, want) in [
        ("1", vec!["7"]),
        ("2", vec!["4", "3"]),
        ("3", vec!["3", "2", "2"]),
    ] {
        let r = run(dir.path(), &["launch", "-n", n, "r.rhai", "--set", &model]);
        r.ok();
        for (rank, rows) in want.iter().enumerate() {
            assert_eq!(
                lines_of(&r.stdout, rank),
                [format!("rows {rows} of 7 3")],
                "{n} processes: {}",
                r.stdout
            );
        }
    }
}

#[test]
fn batched_generation_gives_one_process_rows() {
    let script = r#"
let m = load(args.model);
let outs = generate(m, ["a b", "c", "d a b c", "b b", "a"], #{max_tokens: 6, chat: false});
let sampled = generate(m, ["a b", "c", "d a b c"], #{max_tokens: 6, chat: false, temperature: 1.0, seed: 3});
print(`outputs ${outs} ${sampled}`);
"#;
    let dir = scratch();
    write(dir.path(), "g.rhai", script);
    let model = format!("model={FIXTURE}");
    let mut seen = Vec::new();
    for n in ["1", "2", "3"] {
        let r = run(dir.path(), &["launch", "-n", n, "g.rhai", "--set", &model]);
        r.ok();
        let lines = lines_of(&r.stdout, 0);
        assert_eq!(lines.len(), 1, "{}", r.stdout);
        seen.push(lines[0].clone());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
}

/// Probes (two classes, several classes with a choice of c, a regression), directions over
/// every layer and a run_with_cache of every hook point; each capture runs one row per batch,
/// so the activations, and so everything trained on them, are the same bits on any number of
/// processes. Each rank prints the layers it trained and the rows it ran; rank 0 saves the
/// rest, with the same probe trained `locally` (every layer on this rank) beside it.
const PROBE_STUDY: &str = r#"
let m = load(args.model);
let pos = ["a b c", "a a b c d", "b c", "c c c a", "a b", "d d a b c"];
let neg = ["d c b a", "c b", "b b b d a", "d d d", "c a", "a d c b b", "b a"];
let texts = pos + neg;
let opts = #{layers: "all", folds: 3, batch_size: 1, progress: false};
let p = probe(m, pos, neg, opts);
let alone = locally(|| probe(m, pos, neg, opts));
let c = capture(m, texts, #{batch_size: 1});
let classes = [];
for i in 0..texts.len() { classes.push(i % 3); }
let multi = probe(m, c, classes, #{folds: 2, c: [0.1, 1.0], progress: false});
let reg = probe(m, c, texts.map(|t| t.len() * 0.5), #{folds: 3, c: [0.5, 2.0], progress: false});
let rows = 0;
hook(m, "blocks.0.hook_resid_post", |x| { rows += x.shape[0]; });
let r = run_with_cache(m, texts, #{points: "all"});
clear_hooks(m);
let ds = directions(m, pos, neg, #{method: "probe", batch_size: 1});
print(`trained ${p.trained_here} ${multi.trained_here} ${reg.trained_here} ${alone.trained_here} rows ${rows}`);
let vectors = |xs| xs.map(|d| d.vector.to_array());
save_json(#{
    probe: p.to_map(), alone: alone.to_map(), multi: multi.to_map(), reg: reg.to_map(),
    dirs: vectors.call(directions(p)), alone_dirs: vectors.call(directions(alone)),
    multi_dirs: [0, 1].map(|l| direction(multi, l, 2).vector.to_array()),
    reg_dirs: vectors.call(directions(reg)),
    layer_dirs: vectors.call(ds),
    logits: r.logits.to_array(),
    cache: keys(r.cache).map(|k| [k, r.cache[k].map(|t| t.to_array())]),
    cache_n: r.cache.n,
}, args.out + "/probe.json");
"#;

/// [`PROBE_STUDY`] on `n` processes: rank 0's saved values and each rank's printed line.
fn probe_study(n: usize) -> (serde_json::Value, Vec<Vec<String>>) {
    let dir = scratch();
    write(dir.path(), "p.rhai", PROBE_STUDY);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    let model = format!("model={FIXTURE}");
    let n_s = n.to_string();
    let r = run(
        dir.path(),
        &[
            "launch", "-n", &n_s, "p.rhai", "--set", &model, "--out", &out_s,
        ],
    );
    r.ok();
    let lines = (0..n).map(|rank| lines_of(&r.stdout, rank)).collect();
    let v = serde_json::from_str(&std::fs::read_to_string(out.join("probe.json")).unwrap());
    (v.unwrap(), lines)
}

#[test]
fn probes_split_their_layers_and_give_one_process_results() {
    let (one, lines) = probe_study(1);
    assert_eq!(
        lines,
        [["trained [0, 1] [0, 1] [0, 1] [0, 1] rows 13"]],
        "one process trains every layer and runs every row"
    );
    // Every layer trained here gives the same probe as the shared training, on one process too.
    assert_eq!(one["probe"], one["alone"]);
    assert_eq!(one["dirs"], one["alone_dirs"]);
    assert_eq!(one["cache_n"], 13);
    // The fixture has two layers: ranks train one each (a third rank none), and run their
    // share of the 13 rows.
    for (n, want) in [
        (
            2,
            vec!["[0] [0] [0] [0, 1] rows 7", "[1] [1] [1] [0, 1] rows 6"],
        ),
        (
            3,
            vec![
                "[0] [0] [0] [0, 1] rows 5",
                "[1] [1] [1] [0, 1] rows 4",
                "[] [] [] [0, 1] rows 4",
            ],
        ),
    ] {
        let (many, lines) = probe_study(n);
        let want: Vec<Vec<String>> = want.iter().map(|w| vec![format!("trained {w}")]).collect();
        assert_eq!(lines, want, "{n} processes");
        for key in [
            "probe",
            "alone",
            "multi",
            "reg",
            "dirs",
            "multi_dirs",
            "reg_dirs",
            "layer_dirs",
            "cache_n",
        ] {
            let d = max_diff(&one[key], &many[key], key);
            assert!(
                d < 1e-6,
                "{n} processes: {key} differs from one process by {d}"
            );
        }
        assert_eq!(
            one["probe"]["score"], many["probe"]["score"],
            "{n} processes"
        );
        assert_eq!(many["probe"], many["alone"], "{n} processes");
        for key in ["logits", "cache"] {
            let d = max_diff(&one[key], &many[key], key);
            assert!(
                d < 1e-5,
                "{n} processes: {key} differs from one process by {d}"
            );
        }
    }
}

#[test]
fn a_probe_of_different_data_per_rank_is_an_error_on_every_rank() {
    let script = r#"
let m = load(args.model);
let texts = ["a b c", "a a b c d", "b c", "c c c a", "d c b a", "c b", "b b b d a", "d d d"];
let c = capture(m, texts);
let labels = [];
for i in 0..texts.len() { labels.push((i + world().rank) % 2); }
probe(m, c, labels, #{folds: 2, progress: false});
"#;
    let dir = scratch();
    write(dir.path(), "d.rhai", script);
    let model = format!("model={FIXTURE}");
    let r = run(
        dir.path(),
        &["launch", "-n", "2", "d.rhai", "--set", &model],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("ranks 0 and 1 hold different activations, labels or options"),
        "{}",
        r.stderr
    );
}
