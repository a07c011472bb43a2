//! `mlxi launch -n N`: N local processes as one MLX group, over the `ring` backend on loopback.
//!
//! It does what `mlx.launch -n N --backend ring` does on one machine: it writes a ring host file
//! (one `["127.0.0.1:PORT"]` entry per rank, the JSON MLX reads from `MLX_HOSTFILE`) and starts
//! each rank with `MLX_RANK` and `MLX_HOSTFILE` set. Then it watches them: output is relayed line
//! by line (rank 0's as it is, the others' prefixed `[rank K] `), and when a rank fails the others
//! are stopped at once (MLX's ring would otherwise wait in `recv` for a peer that is gone), and
//! the launcher exits with that rank's status.
//!
//! `mlxi launch --hostfile hosts.json` starts one rank per host of an mlx.launch host file (see
//! [`crate::hostfile`]) the way `mlx.launch --backend ring` does: port `PORT + k` for the k-th
//! (rank, IP) pair, a ring host file and `MLX_RANK` written on each host by a small shell script
//! that then `exec`s mlxi, started over ssh (the host `127.0.0.1` runs it here, without ssh).
//! Every word of that script is shell-quoted. The script first prints its pid, so a rank that
//! must be stopped is also killed on its host (as mlx.launch's `make_kill_script`), not only its
//! ssh client. `mlx.launch --hostfile hosts.json -- mlxi run study.rhai` works as well.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
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
            share_cores(&mut cmd, spec.n);
        }
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(child) => ranks.push(Rank::new(rank, child, None)),
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

/// The variables that cap a CPU BLAS's threads (MKL, OpenMP, OpenBLAS, Apple's Accelerate).
const BLAS_THREADS: [&str; 4] = [
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
];

/// `n` ranks on one machine: each rank's BLAS gets its share of the cores, unless the user set
/// the variables. Left at its default each rank's BLAS starts a thread per core, and ranks that
/// wait on each other (a pipeline's stages, every collective) keep their threads spinning on
/// the cores the working rank needs: on 2 cores a 2-stage pipeline generated 7x slower than
/// one process, and at the same speed with one thread per rank (BENCHMARKS.md, "Pipeline
/// sharding").
fn share_cores(cmd: &mut Command, n: usize) {
    if BLAS_THREADS.iter().any(|v| std::env::var_os(v).is_some()) {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let each = (cores / n.max(1)).max(1).to_string();
    for v in BLAS_THREADS {
        cmd.env(v, &each);
    }
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
    /// Where a host file's rank runs (none for `-n N` alone).
    remote: Option<Remote>,
}

/// A rank started by a host file's script: its host and the pid the script printed there.
struct Remote {
    host: String,
    /// The ssh program, or `None` for the host `127.0.0.1` (run here).
    ssh: Option<OsString>,
    pid: Arc<Mutex<Option<u32>>>,
}

impl Rank {
    fn new(rank: usize, mut child: Child, remote: Option<Remote>) -> Rank {
        let prefix = if rank == 0 {
            String::new()
        } else {
            format!("[rank {rank}] ")
        };
        let mut relays = Vec::new();
        if let Some(out) = child.stdout.take() {
            let p = prefix.clone();
            let pid = remote.as_ref().map(|r| Arc::clone(&r.pid));
            relays.push(std::thread::spawn(move || {
                relay(out, &p, pid, |line| {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(line);
                    let _ = o.flush();
                })
            }));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(std::thread::spawn(move || {
                relay(err, &prefix, None, |line| {
                    let _ = std::io::stderr().lock().write_all(line);
                })
            }));
        }
        Rank {
            rank,
            child,
            status: None,
            relays,
            remote,
        }
    }

    /// `rank K`, or `rank K on HOST` for a host file's rank.
    fn name(&self) -> String {
        match &self.remote {
            Some(r) => format!("rank {} on {}", self.rank, r.host),
            None => format!("rank {}", self.rank),
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

/// Copies lines from `from`, each with `prefix`, to `to` (the last line gets a newline). With
/// `pid`, a first line `mlxi-launch-pid N` (from [`rank_script`]) is kept there, not relayed.
fn relay(from: impl Read, prefix: &str, pid: Option<Arc<Mutex<Option<u32>>>>, to: impl Fn(&[u8])) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if std::mem::take(&mut first) {
                    if let Some(slot) = &pid {
                        let text = String::from_utf8_lossy(&line);
                        let n = text.trim_end().strip_prefix(PID_LINE);
                        if let Some(n) = n.and_then(|n| n.parse::<u32>().ok()) {
                            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
                            continue;
                        }
                    }
                }
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
                    let status = r.status.map_or_else(String::new, describe);
                    let ssh = r.remote.as_ref().is_some_and(|m| m.ssh.is_some())
                        && r.status.and_then(|s| s.code()) == Some(255);
                    if ssh {
                        // ssh's own status: no connection, or a connection lost.
                        format!(
                            "{} {status} (ssh could not reach the host or lost it)",
                            r.name()
                        )
                    } else {
                        format!("{} {status}", r.name())
                    }
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

/// SIGTERM to every running rank, then SIGKILL to those still running after [`GRACE`]. A
/// host file's rank on another host is also sent SIGTERM there, over ssh.
fn stop(ranks: &mut [Rank]) {
    let mut killers: Vec<Child> = ranks
        .iter()
        .filter(|r| r.status.is_none())
        .filter_map(|r| r.remote.as_ref())
        .filter_map(kill_remote)
        .collect();
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
    for k in &mut killers {
        while matches!(k.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = k.kill();
        let _ = k.wait();
    }
}

/// mlx.launch's first ring port (`--starting-port`).
pub const DEFAULT_PORT: u16 = 32323;

/// How long ssh tries to connect before it gives up (exit status 255), in seconds.
const SSH_CONNECT_TIMEOUT: u32 = 15;

/// The first line a rank's script prints: its pid on its host.
const PID_LINE: &str = "mlxi-launch-pid ";

/// What to launch on the hosts of an mlx.launch host file.
pub struct HostsSpec {
    /// The host file (mlx.launch's JSON; see [`crate::hostfile`]).
    pub hostfile: PathBuf,
    /// Ranks per host (mlx.launch's `-n`, `--repeat-hosts`); 1 unless asked.
    pub per_host: usize,
    /// The first ring port; rank by rank and IP by IP the ranks take the next ones.
    pub port: u16,
    /// The ssh program.
    pub ssh: OsString,
    /// The backend asked for on the command line (else the host file's, else `ring`).
    pub backend: Option<String>,
    /// The folder the ranks run in; `None`: this one's path, where it exists on the host.
    pub cwd: Option<String>,
    /// `KEY=VALUE` variables for every rank, after the host file's `envs`.
    pub env: Vec<String>,
    /// The mlxi program on the hosts.
    pub program: String,
    /// Its arguments (e.g. `run study.rhai --set k=v`).
    pub args: Vec<OsString>,
}

/// Starts one rank per host (or `per_host` each) of `spec.hostfile`, relays their output and
/// waits for them, as [`launch`] does for local ranks. Nothing starts unless the host file and
/// the options are all valid.
pub fn launch_hosts(spec: &HostsSpec) -> Result<i32> {
    let bad = |why: String| Error::Invalid(format!("launch: {why}"));
    let file = crate::hostfile::read(&spec.hostfile, MAX_PROCESSES)?;
    let backend = spec
        .backend
        .clone()
        .unwrap_or_else(|| match file.backend.as_str() {
            "" => "ring".into(),
            b => b.into(),
        });
    if backend != "ring" {
        return Err(bad(
            if crate::hostfile::BACKENDS.contains(&backend.as_str()) {
                let asks = match spec.backend {
                    Some(_) => "--backend asks".to_string(),
                    None => format!("host file {} asks", spec.hostfile.display()),
                };
                format!(
                    "{asks} for the {backend} backend: mlxi launch starts ring jobs only; start \
                 this one with `mlx.launch --hostfile FILE --backend {backend} -- mlxi run \
                 SCRIPT` (mlxi joins the group it sets up)"
                )
            } else {
                format!(
                    "--backend: expected one of {}",
                    crate::hostfile::BACKENDS.join(", ")
                )
            },
        ));
    }
    let total = spec.per_host.checked_mul(file.hosts.len());
    if spec.per_host == 0 || total.is_none_or(|t| t > MAX_PROCESSES) {
        return Err(bad(format!(
            "-n {} on {} host(s): expected 1 to {MAX_PROCESSES} processes in all",
            spec.per_host,
            file.hosts.len()
        )));
    }
    if let Some(i) = file.hosts.iter().position(|h| h.ips.is_empty()) {
        return Err(bad(format!(
            "host file {}: hosts[{i}] has no \"ips\": the ring backend needs the IPs its \
             ranks listen on",
            spec.hostfile.display()
        )));
    }
    // The ranks, mlx.launch's way: each host repeated per_host times, in order.
    let hosts: Vec<&crate::hostfile::Host> = file
        .hosts
        .iter()
        .flat_map(|h| std::iter::repeat_n(h, spec.per_host))
        .collect();
    let pairs: usize = hosts.iter().map(|h| h.ips.len()).sum();
    let last = u32::from(spec.port) + pairs as u32 - 1;
    if spec.port < 1024 || last > u32::from(u16::MAX) {
        return Err(bad(format!(
            "--port {}: the ranks need ports {} to {last}, within 1024..65535",
            spec.port, spec.port
        )));
    }
    let mut next = u32::from(spec.port);
    let ring: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            h.ips
                .iter()
                .map(|ip| {
                    next += 1;
                    format!("{ip}:{}", next - 1)
                })
                .collect()
        })
        .collect();
    let ring = serde_json::to_string(&ring).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut env = file.envs.clone();
    for e in &spec.env {
        env.push(crate::hostfile::env_var(e).map_err(|why| bad(format!("--env: {why}")))?);
    }
    let cwd = match &spec.cwd {
        Some(d) => Cwd::Required(d.clone()),
        None => Cwd::IfThere(
            std::env::current_dir()
                .map_err(|e| Error::io(".", e))?
                .to_str()
                .ok_or_else(|| bad("this folder's path is not UTF-8; give --cwd".into()))?
                .to_string(),
        ),
    };
    let args: Vec<&str> = spec
        .args
        .iter()
        .map(|a| a.to_str())
        .collect::<Option<_>>()
        .ok_or_else(|| bad("an argument is not UTF-8".into()))?;
    let scripts: Vec<String> = (0..hosts.len())
        .map(|rank| {
            let group = (hosts.len() > 1).then_some((rank, ring.as_str()));
            rank_script(group, &cwd, &env, &spec.program, &args)
        })
        .collect::<Result<_>>()?;

    let mut ranks: Vec<Rank> = Vec::with_capacity(hosts.len());
    for (rank, (host, script)) in hosts.iter().zip(&scripts).enumerate() {
        let here = host.ssh == "127.0.0.1";
        let mut cmd = if here {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        } else {
            let mut c = Command::new(&spec.ssh);
            c.args(ssh_options()).arg(&host.ssh).arg(remote_sh(script)?);
            c
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let remote = Remote {
            host: host.ssh.clone(),
            ssh: (!here).then(|| spec.ssh.clone()),
            pid: Arc::new(Mutex::new(None)),
        };
        match cmd.spawn() {
            Ok(child) => ranks.push(Rank::new(rank, child, Some(remote))),
            Err(e) => {
                stop(&mut ranks);
                let program = if here {
                    "/bin/sh".into()
                } else {
                    spec.ssh.clone()
                };
                return Err(bad(format!(
                    "cannot start {} for rank {rank}: {e}",
                    program.to_string_lossy()
                )));
            }
        }
    }
    let code = watch(&mut ranks);
    for r in &mut ranks {
        r.join_output();
    }
    Ok(code)
}

/// Where a host file's ranks run.
enum Cwd {
    /// `--cwd`: a rank fails when its host lacks the folder.
    Required(String),
    /// The launcher's folder, used on hosts that have it (mlx.launch's default).
    IfThere(String),
}

/// ssh's options: never ask for a password (that would wait forever), give up connecting after
/// [`SSH_CONNECT_TIMEOUT`] seconds.
fn ssh_options() -> [String; 4] {
    [
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={SSH_CONNECT_TIMEOUT}"),
    ]
}

fn quote(word: &str) -> Result<String> {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .map_err(|_| Error::Invalid("launch: a NUL byte in an argument".into()))
}

/// The command ssh hands to the host's login shell: `sh -c SCRIPT`, so the script is read by a
/// POSIX shell whatever the login shell is.
fn remote_sh(script: &str) -> Result<String> {
    Ok(format!("sh -c {}", quote(script)?))
}

/// The POSIX shell script that starts one rank on its host: print its pid, enter the folder,
/// set the variables, write the ring host file (`group`: the rank and the ring JSON; none for
/// a group of one), then `exec` mlxi. Every value is shell-quoted.
fn rank_script(
    group: Option<(usize, &str)>,
    cwd: &Cwd,
    env: &[(String, String)],
    program: &str,
    args: &[&str],
) -> Result<String> {
    let mut s = format!("printf '{PID_LINE}%s\\n' \"$$\"; ");
    match cwd {
        Cwd::Required(d) => {
            let d = quote(d)?;
            s += &format!(
                "cd {d} || {{ echo \"mlxi launch: no folder \"{d}\" on $(uname -n)\" >&2; \
                 exit 1; }}; "
            );
        }
        Cwd::IfThere(d) => s += &format!("cd {} 2>/dev/null; ", quote(d)?),
    }
    for (k, v) in env {
        // `k` is a checked identifier.
        s += &format!("export {k}={}; ", quote(v)?);
    }
    if let Some((rank, ring)) = group {
        s += &format!(
            "f=$(mktemp) && printf '%s' {} > \"$f\" || exit 1; export MLX_HOSTFILE=\"$f\"; \
             export MLX_RANK={rank}; ",
            quote(ring)?
        );
    }
    let words: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Result<_>>()?;
    s += &format!("exec {}", words.join(" "));
    Ok(s)
}

/// Sends SIGTERM to a rank's process on its host, over ssh (the pid its script printed);
/// returns the ssh process, or `None` for a rank run here or one whose pid never came.
fn kill_remote(r: &Remote) -> Option<Child> {
    let ssh = r.ssh.as_ref()?;
    let pid = (*r.pid.lock().unwrap_or_else(|e| e.into_inner()))?;
    let mut cmd = Command::new(ssh);
    cmd.args(ssh_options())
        .arg(&r.host)
        .arg(format!("kill -TERM {pid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().ok()
}

#[cfg(test)]
mod tests {

    #[test]
    fn local_ranks_share_the_cores() {
        let mut cmd = Command::new("true");
        share_cores(&mut cmd, 2);
        let set: Vec<(String, String)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        if BLAS_THREADS.iter().any(|v| std::env::var_os(v).is_some()) {
            // The user's own setting wins: nothing is added.
            assert!(set.is_empty(), "{set:?}");
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let each = (cores / 2).max(1).to_string();
        let mut want: Vec<(String, String)> = BLAS_THREADS
            .iter()
            .map(|v| (v.to_string(), each.clone()))
            .collect();
        want.sort();
        let mut set = set;
        set.sort();
        assert_eq!(set, want);
    }

    use super::*;

    /// The script, run by a real `sh`, passes every word through unchanged.
    #[test]
    fn rank_scripts_quote_every_word() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let tricky = [
            "a b",
            "$(touch x)",
            "`touch y`",
            "it's",
            "\"q\"",
            "-e",
            "; touch z",
            "",
        ];
        let env = [("V".to_string(), "$HOME ' \" `x`".to_string())];
        let script = rank_script(
            Some((1, "[[\"127.0.0.1:1\"], [\"127.0.0.1:2\"]]")),
            &Cwd::Required(d.clone()),
            &env,
            "/bin/sh",
            &[
                &["-c", "printf '%s|' \"$@\" \"$V\" \"$MLX_RANK\" \"$(cat \"$MLX_HOSTFILE\")\" \"$PWD\"", "sh"][..],
                &tricky[..],
            ]
            .concat(),
        )
        .unwrap();
        // Through a login shell as ssh does: `sh -c 'sh -c SCRIPT'`.
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(remote_sh(&script).unwrap())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (pid_line, rest) = text.split_once('\n').unwrap();
        assert!(pid_line.starts_with(PID_LINE), "{text}");
        let want = format!(
            "{}|$HOME ' \" `x`|1|[[\"127.0.0.1:1\"], [\"127.0.0.1:2\"]]|{d}|",
            tricky.join("|")
        );
        assert_eq!(rest, want);
        for f in ["x", "y", "z"] {
            assert!(!dir.path().join(f).exists());
        }
    }
}
