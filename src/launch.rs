//! `mlxi launch -n N`: N local processes as one MLX group, over the `ring` backend on loopback.
//!
//! It does what `mlx.launch -n N --backend ring` does on one machine: it writes a ring host file
//! (one `["127.0.0.1:PORT"]` entry per rank, the JSON MLX reads from `MLX_HOSTFILE`) and starts
//! each rank with `MLX_RANK` and `MLX_HOSTFILE` set. Then it watches them: output is relayed line
//! by line (rank 0's as it is, the others' prefixed `[rank K] `), and when a rank fails the others
//! are stopped at once (MLX's ring would otherwise wait in `recv` for a peer that is gone), and
//! the launcher exits with that rank's status.
//!
//! Several machines are started by `mlx.launch` itself, which runs any command:
//! `mlx.launch --hostfile hosts.json -- mlxi run study.rhai` (see the README, "More than one
//! machine").

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The most processes one `mlxi launch` starts.
pub const MAX_PROCESSES: usize = 64;

/// How long stopped ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// What to launch.
pub struct LaunchSpec {
    /// Number of processes (ranks).
    pub n: usize,
    /// The first ring port (the ranks use `port..port + n`); `None` picks free ports.
    pub port: Option<u16>,
    /// The mlxi binary to run for each rank.
    pub exe: PathBuf,
    /// Its arguments (e.g. `run study.rhai --set k=v`).
    pub args: Vec<OsString>,
}

/// Starts the ranks, relays their output and waits for them; returns the exit status for the
/// launcher (0 when every rank succeeded, else the first failing rank's).
pub fn launch(spec: &LaunchSpec) -> Result<i32> {
    if spec.n == 0 || spec.n > MAX_PROCESSES {
        return Err(Error::Invalid(format!(
            "launch: -n {}: expected 1 to {MAX_PROCESSES} processes",
            spec.n
        )));
    }
    let ports = match spec.port {
        Some(p) => {
            let last = u32::from(p) + spec.n as u32 - 1;
            if p < 1024 || last > u32::from(u16::MAX) {
                return Err(Error::Invalid(format!(
                    "launch: --port {p}: the ranks need ports {p} to {last}, within 1024..65535"
                )));
            }
            (0..spec.n as u16).map(|i| p + i).collect()
        }
        None => free_ports(spec.n)?,
    };
    let hosts: Vec<Vec<String>> = ports
        .iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let mut hostfile = tempfile::Builder::new()
        .prefix("mlxi-hosts-")
        .suffix(".json")
        .tempfile()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let json = serde_json::to_string(&hosts).map_err(|e| Error::Invalid(e.to_string()))?;
    hostfile
        .write_all(json.as_bytes())
        .map_err(|e| Error::io(hostfile.path(), e))?;

    let mut ranks: Vec<Rank> = Vec::with_capacity(spec.n);
    for rank in 0..spec.n {
        let mut cmd = Command::new(&spec.exe);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if spec.n > 1 {
            cmd.env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", hostfile.path());
        }
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(child) => ranks.push(Rank::new(rank, child)),
            Err(e) => {
                stop(&mut ranks);
                return Err(Error::io(&spec.exe, e));
            }
        }
    }
    let code = watch(&mut ranks);
    for r in &mut ranks {
        r.join_output();
    }
    Ok(code)
}

/// `n` distinct ports that were free a moment ago (bound to port 0, then released).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::Invalid(format!("launch: no free port on 127.0.0.1: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::Invalid(format!("launch: no free port on 127.0.0.1: {e}")))
}

/// On Linux, a rank is killed when the launcher dies, so no rank outlives it.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// One started rank and the threads relaying its output.
struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
    relays: Vec<JoinHandle<()>>,
}

impl Rank {
    fn new(rank: usize, mut child: Child) -> Rank {
        let prefix = if rank == 0 {
            String::new()
        } else {
            format!("[rank {rank}] ")
        };
        let mut relays = Vec::new();
        if let Some(out) = child.stdout.take() {
            let p = prefix.clone();
            relays.push(std::thread::spawn(move || {
                relay(out, &p, |line| {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(line);
                    let _ = o.flush();
                })
            }));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(std::thread::spawn(move || {
                relay(err, &prefix, |line| {
                    let _ = std::io::stderr().lock().write_all(line);
                })
            }));
        }
        Rank {
            rank,
            child,
            status: None,
            relays,
        }
    }

    fn failed(&self) -> bool {
        self.status.is_some_and(|s| !s.success())
    }

    fn join_output(&mut self) {
        for h in self.relays.drain(..) {
            let _ = h.join();
        }
    }
}

/// Copies lines from `from`, each with `prefix`, to `to` (the last line gets a newline).
fn relay(from: impl Read, prefix: &str, to: impl Fn(&[u8])) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let mut out = prefix.as_bytes().to_vec();
                out.extend_from_slice(&line);
                to(&out);
            }
        }
    }
}

/// The status a shell would report: the exit code, or 128 + the signal.
fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// How long after the first failure the launcher looks for others before stopping the rest: a
/// killed rank's peers see its socket close and fail within milliseconds, sometimes before the
/// launcher notices the rank itself.
const SETTLE: Duration = Duration::from_millis(300);

/// Waits for every rank; when one fails, stops the others. Returns the launcher's status: 0
/// when every rank succeeded, else that of a rank killed by a signal if any, else of the first
/// failed rank seen.
fn watch(ranks: &mut [Rank]) -> i32 {
    loop {
        let running = poll(ranks);
        if ranks.iter().any(Rank::failed) {
            std::thread::sleep(SETTLE);
            poll(ranks);
            let failed: Vec<&Rank> = ranks.iter().filter(|r| r.failed()).collect();
            let culprit = failed
                .iter()
                .find(|r| r.status.is_some_and(|s| s.code().is_none()))
                .unwrap_or(&failed[0]);
            let code = culprit.status.map_or(1, code_of);
            let what: Vec<String> = failed
                .iter()
                .map(|r| {
                    format!(
                        "rank {} {}",
                        r.rank,
                        r.status.map_or_else(String::new, describe)
                    )
                })
                .collect();
            let others = ranks.iter().filter(|o| o.status.is_none()).count();
            if others > 0 {
                eprintln!(
                    "mlxi launch: {}; stopping the other {others} rank(s)",
                    what.join(", ")
                );
            } else if ranks.len() > 1 {
                eprintln!("mlxi launch: {}", what.join(", "));
            }
            stop(ranks);
            return code;
        }
        if running == 0 {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records the ranks that have exited; returns how many still run.
fn poll(ranks: &mut [Rank]) -> usize {
    let mut running = 0;
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        match r.child.try_wait() {
            Ok(Some(status)) => r.status = Some(status),
            Ok(None) => running += 1,
            Err(_) => r.status = Some(ExitStatus::default()),
        }
    }
    running
}

/// SIGTERM to every running rank, then SIGKILL to those still running after [`GRACE`].
fn stop(ranks: &mut [Rank]) {
    for r in ranks.iter_mut() {
        if r.status.is_none() {
            // SAFETY: signals our own child, still unreaped (its pid cannot have been reused).
            unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let until = Instant::now() + GRACE;
    for r in ranks.iter_mut() {
        while r.status.is_none() {
            match r.child.try_wait() {
                Ok(Some(s)) => r.status = Some(s),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = r.child.kill();
                    r.status = r.child.wait().ok().or(Some(ExitStatus::default()));
                }
            }
        }
    }
}
