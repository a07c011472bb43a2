//! Running `mlxi launch` (several ranks) from integration tests: a command without this test
//! process's distributed variables, a bounded wait, and each rank's lines of the relayed output.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{mlxi, Run};

/// `mlxi ARGS...` in `dir` with the distributed variables of this test process removed.
pub fn command(home: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = mlxi(home);
    c.current_dir(dir)
        .args(args)
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .env_remove("MLXI_BACKEND")
        .env_remove("MLXI_SSH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` up to `limit`; past it, kills it (its ranks die with it) and fails: a hang
/// is a failure, not a stuck CI.
pub fn finish(mut child: Child, limit: Duration) -> (Run, Duration) {
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

/// Rank 0's lines (unprefixed) and rank K's lines (prefix removed).
pub fn lines_of(stdout: &str, rank: usize) -> Vec<String> {
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
