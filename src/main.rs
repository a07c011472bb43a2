//! The `mlxi` command line: the REPL, `run FILE`, `-e CODE`, `models`, `bench`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mlxi::fsaccess::{Grants, Permissions};
use mlxi::script::{display, print_line, Context, Runner};
use mlxi::{interrupt, Error};
use rhai::{Dynamic, Map};

/// A research shell for looking inside language models, on Apple's MLX.
///
/// With no arguments, starts the interactive shell.
#[derive(Parser)]
#[command(name = "mlxi", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Evaluate CODE and print its value
    #[arg(short = 'e', long = "eval", value_name = "CODE")]
    eval: Option<String>,

    #[command(flatten)]
    access: Access,

    #[command(subcommand)]
    command: Option<Command>,
}

/// What a script may touch beyond its defaults (see docs/SHELL.md, "Permissions").
#[derive(clap::Args, Clone, Default)]
struct Access {
    /// Also let the script read PATH (a file or a folder); repeatable
    #[arg(long = "allow-read", value_name = "PATH")]
    read: Vec<PathBuf>,
    /// Also let the script write PATH (a file or a folder), replacing existing files, and read
    /// it; repeatable
    #[arg(long = "allow-write", value_name = "PATH")]
    write: Vec<PathBuf>,
    /// Let the script use the network (downloading a model that is not in the Hugging Face
    /// cache)
    #[arg(long = "allow-net")]
    net: bool,
}

impl Access {
    fn grants(&self) -> Grants {
        Grants {
            read: self.read.clone(),
            write: self.write.clone(),
            net: self.net,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment file
    Run {
        /// The script (.rhai)
        file: PathBuf,
        /// A value for the script, in scope as `args.KEY`; repeatable. Numbers and true/false
        /// become numbers and booleans, anything else a string
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// The output folder, where the script may write and replace files (default: `out/`
        /// in the script's folder); the script sees it as `args.out`. `--set out=DIR` does
        /// the same with DIR relative to the script's folder
        #[arg(long = "out", value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        access: Access,
    },
    /// Run a script as N processes of one MLX group (ring backend on loopback), or as one
    /// process per host of an mlx.launch host file (`--hostfile`, started over ssh); the
    /// script sees its rank in `world()`
    Launch {
        /// Number of processes; with --hostfile, processes per host (mlx.launch's -n)
        #[arg(
            short = 'n',
            long = "processes",
            value_name = "N",
            required_unless_present = "hostfile"
        )]
        n: Option<usize>,
        /// The first ring port (the ranks take PORT..PORT+N); default: free ports, or 32323
        /// with --hostfile (one port per rank and IP, as mlx.launch)
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        #[command(flatten)]
        hosts: LaunchHosts,
        /// The script and its `run` arguments (`study.rhai --set k=v`), or `-e CODE`
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "SCRIPT [ARGS]"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// List the models found locally: the default model and the Hugging Face cache
    Models {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Measure load time, prefill and decode speed and peak memory (see BENCHMARKS.md;
    /// bench/run.sh puts these next to mlx-lm's on the same weights)
    Bench {
        /// What to load: "default", a folder, a .gguf file or a Hugging Face repo id
        #[arg(default_value = "default")]
        source: String,
        /// Prompt length in tokens
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to generate (greedy)
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Timed runs; the figures are their medians
        #[arg(long, default_value_t = 1)]
        trials: usize,
        /// Parameter dtype: f32, f16 or bf16
        #[arg(long)]
        dtype: Option<String>,
        /// Keep quantized weights quantized (default on the CPU backend: dequantize at load)
        #[arg(long)]
        keep_quantized: bool,
        /// Also time a forward pass of this many rows (and capture of every hook_resid_post)
        #[arg(long, default_value_t = 0)]
        batch: usize,
        /// Tokens per row of the batched forward
        #[arg(long, default_value_t = 64)]
        batch_len: usize,
        /// Also time batched greedy generation (--gen-tokens new tokens per row) at these batch
        /// sizes, e.g. 1,8,32
        #[arg(long, value_delimiter = ',')]
        gen_batches: Vec<usize>,
        /// Prompt tokens per row of the batched generation
        #[arg(long, default_value_t = 32)]
        gen_batch_len: usize,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// `--set` values: an integer, a float, a boolean when they look like one, else a string.
fn arg_value(v: &str) -> Dynamic {
    let t = v.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Dynamic::from_int(i);
    }
    let numeric = t.chars().any(|c| c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_digit() || "+-.eE_".contains(c));
    if numeric {
        if let Ok(f) = t.parse::<f64>() {
            return Dynamic::from_float(f);
        }
    }
    match t {
        "true" => Dynamic::from_bool(true),
        "false" => Dynamic::from_bool(false),
        _ => Dynamic::from(v.to_string()),
    }
}

/// Runs mlxi on one thread with a large stack ([`mlxi::script::ENGINE_STACK_SIZE`]), so that
/// the script engine's depth limits fire before the stack overflows. Everything, MLX included,
/// runs on that thread; the main thread only waits for it.
fn main() {
    let worker = std::thread::Builder::new()
        .name("mlxi".into())
        .stack_size(mlxi::script::ENGINE_STACK_SIZE)
        .spawn(main_inner);
    let status = match worker {
        Ok(handle) => handle.join().unwrap_or(ExitCode::FAILURE),
        Err(e) => {
            eprintln!("mlxi: cannot start the engine thread: {e}");
            ExitCode::FAILURE
        }
    };
    exit_now(if status == ExitCode::SUCCESS { 0 } else { 1 })
}

/// Leaves the process without running shared libraries' destructors: OpenBLAS 0.3.21's (Debian
/// 12) joins its worker threads at exit and was seen to deadlock there after a run, hanging a
/// finished `mlxi -e`. Everything mlxi writes is flushed first; nothing else needs a destructor.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process immediately; all output was flushed above.
    unsafe { libc::_exit(code) }
}

fn main_inner() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    mlxi::distributed::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::Interrupted) => {
                eprintln!("interrupted");
                exit_now(130)
            }
            Some(Error::Script(report)) => {
                eprintln!("{report}");
                ExitCode::FAILURE
            }
            _ => {
                eprintln!("mlxi: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(code) = cli.eval {
        interrupt::install_handler(true)?;
        join_world()?;
        let runner = Runner::new(interactive_context(&cli.access)?);
        let value = runner.eval_code("<-e>", &code)?;
        if let Some(text) = display::show(&value) {
            print_line(&text);
        }
        return Ok(());
    }
    match cli.command {
        Some(Command::Run {
            file,
            set,
            out,
            access,
        }) => run_file(&file, set, out, &access),
        Some(Command::Launch {
            n,
            port,
            hosts,
            command,
        }) => {
            if hosts.hostfile.is_some() {
                launch_hosts(n, port, hosts, command)
            } else {
                launch(n.unwrap_or(1), port, command)
            }
        }
        Some(Command::Models { json }) => models(json),
        Some(Command::Bench {
            source,
            prompt_tokens,
            gen_tokens,
            trials,
            dtype,
            keep_quantized,
            batch,
            batch_len,
            gen_batches,
            gen_batch_len,
            json,
        }) => bench(
            &source,
            &mlxi::bench::BenchSpec {
                prompt_tokens,
                gen_tokens,
                trials,
                batch: (batch > 0).then_some((batch, batch_len.max(1))),
                gen_batches,
                gen_batch_len,
            },
            dtype,
            keep_quantized,
            json,
        ),
        None => Ok(mlxi::repl::Repl::with_context(interactive_context(&cli.access)?).run()?),
    }
}

/// The REPL's and `-e`'s context: the current folder, the network, and the grants.
fn interactive_context(access: &Access) -> anyhow::Result<Rc<Context>> {
    let cwd = std::env::current_dir().context("cannot open the current folder")?;
    Ok(Context::with_permissions(Permissions::interactive(
        &cwd,
        &access.grants(),
    )?))
}

fn run_file(
    file: &Path,
    set: Vec<(String, String)>,
    out: Option<PathBuf>,
    access: &Access,
) -> anyhow::Result<()> {
    if !file.is_file() {
        anyhow::bail!("{}: no such script file", file.display());
    }
    interrupt::install_handler(true)?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open its folder", file.display()))?;
    let mut args: Map = set
        .into_iter()
        .map(|(k, v)| (k.into(), arg_value(&v)))
        .collect();
    // The output folder: `--out DIR` (relative to the current folder, passed to the script as
    // an absolute `args.out`), else `--set out=DIR` as the script reads it (relative to its
    // folder), else `out/` beside the script.
    let set_out = args.get("out").map(|v| v.to_string());
    let out_dir: Option<PathBuf> = match (out, set_out) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give the output folder once: --out DIR or --set out=DIR")
        }
        (Some(o), None) => {
            let o = std::path::absolute(&o)
                .with_context(|| format!("{}: cannot resolve the output folder", o.display()))?;
            args.insert("out".into(), Dynamic::from(o.display().to_string()));
            Some(o)
        }
        (None, Some(v)) => Some(PathBuf::from(v)),
        (None, None) => None,
    };
    let perms = Permissions::script(&dir, out_dir.as_deref(), &access.grants())?;
    join_world()?;
    let runner = Runner::new(Context::with_permissions(perms));
    let _ = runner.run_file(file, args)?;
    Ok(())
}

/// A process started by a launcher joins its group before the script runs, so a missing peer
/// shows at once rather than at the script's first collective.
fn join_world() -> anyhow::Result<()> {
    if mlxi::distributed::launched() {
        mlxi::distributed::world()?;
    }
    Ok(())
}

/// `mlxi launch -n N SCRIPT [ARGS]` (or `-e CODE`): exits with the ranks' status.
fn launch(n: usize, port: Option<u16>, command: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the mlxi binary")?;
    let mut args = command;
    if args.first().is_some_and(|a| a != "-e" && a != "--eval") {
        args.insert(0, "run".into());
    }
    let code = mlxi::launch::launch(&mlxi::launch::LaunchSpec { n, port, exe, args })?;
    exit_now(code)
}

/// `mlxi launch --hostfile`'s options (mlx.launch's names).
#[derive(clap::Args)]
struct LaunchHosts {
    /// An mlx.launch host file (JSON: `[{"ssh": HOST, "ips": [IP, ...]}, ...]`): one rank per
    /// host, started over ssh
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// The ssh program (default: $MLXI_SSH, else `ssh`)
    #[arg(long, value_name = "PROGRAM", requires = "hostfile")]
    ssh: Option<std::ffi::OsString>,
    /// The backend: `ring` (the host file's `backend` by default); jaccl, mpi and nccl jobs
    /// start with mlx.launch
    #[arg(long, value_name = "NAME", requires = "hostfile")]
    backend: Option<String>,
    /// The folder the ranks run in on every host (default: this folder, where it exists)
    #[arg(long, value_name = "DIR", requires = "hostfile")]
    cwd: Option<String>,
    /// A variable for every rank (ssh passes none of this environment); repeatable
    #[arg(long, value_name = "KEY=VALUE", requires = "hostfile")]
    env: Vec<String>,
    /// The mlxi program on the hosts (default: this one's path)
    #[arg(long, value_name = "PATH", requires = "hostfile")]
    mlxi: Option<String>,
}

/// `mlxi launch --hostfile FILE SCRIPT [ARGS]`: exits with the ranks' status.
fn launch_hosts(
    n: Option<usize>,
    port: Option<u16>,
    hosts: LaunchHosts,
    command: Vec<std::ffi::OsString>,
) -> anyhow::Result<()> {
    let program = match hosts.mlxi {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find the mlxi binary")?
            .to_str()
            .context("the mlxi binary's path is not UTF-8; give --mlxi")?
            .to_string(),
    };
    let mut args = command;
    if args.first().is_some_and(|a| a != "-e" && a != "--eval") {
        args.insert(0, "run".into());
    }
    let ssh = hosts
        .ssh
        .or_else(|| std::env::var_os("MLXI_SSH"))
        .unwrap_or_else(|| "ssh".into());
    let code = mlxi::launch::launch_hosts(&mlxi::launch::HostsSpec {
        hostfile: hosts.hostfile.context("--hostfile")?,
        per_host: n.unwrap_or(1),
        port: port.unwrap_or(mlxi::launch::DEFAULT_PORT),
        ssh,
        backend: hosts.backend,
        cwd: hosts.cwd,
        env: hosts.env,
        program,
        args,
    })?;
    exit_now(code)
}

fn models(json: bool) -> anyhow::Result<()> {
    let found = mlxi::model::source::list_local();
    if json {
        print_line(&serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        print_line("no models found: run ./setup for the default model; models downloaded by");
        print_line(&format!(
            "mlx-lm or transformers appear here from {}",
            mlxi::model::source::hf_cache_dir().display()
        ));
        return Ok(());
    }
    let width = found.iter().map(|m| m.source.len()).max().unwrap_or(0);
    for m in &found {
        print_line(&format!(
            "{:width$}  {:>9}  {}",
            m.source,
            format!("{:.1} MB", m.bytes as f64 / 1e6),
            m.kind
        ));
    }
    Ok(())
}

fn bench(
    source: &str,
    spec: &mlxi::bench::BenchSpec,
    dtype: Option<String>,
    keep_quantized: bool,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        spec.prompt_tokens >= 1 && spec.gen_tokens >= 2,
        "bench needs --prompt-tokens >= 1 and --gen-tokens >= 2"
    );
    anyhow::ensure!(
        spec.gen_batch_len >= 1 && spec.gen_batches.iter().all(|&b| (1..=4096).contains(&b)),
        "bench needs --gen-batch-len >= 1 and --gen-batches between 1 and 4096"
    );
    interrupt::install_handler(true)?;
    let opts = mlxi::model::LoadOptions {
        dtype: dtype.as_deref().map(mlxi::model::parse_dtype).transpose()?,
        dequantize: keep_quantized.then_some(false),
        ..Default::default()
    };
    let r = mlxi::bench::run(source, &opts, spec)?;
    if json {
        print_line(&serde_json::to_string(&r)?);
    } else {
        print_line(&format!("model          {}", r.model));
        print_line(&format!("dtype          {} ({})", r.dtype, r.quantization));
        print_line(&format!(
            "device         {} (CPU BLAS: {})",
            r.device, r.blas
        ));
        print_line(&format!("load           {:.2} s", r.load_s));
        print_line(&format!(
            "prefill        {:.1} tokens/s ({} tokens)",
            r.prefill_tps, r.prompt_tokens
        ));
        print_line(&format!(
            "decode         {:.1} tokens/s ({} tokens)",
            r.decode_tps, r.gen_tokens
        ));
        print_line(&format!(
            "peak memory    {:.1} MB (MLX), {:.1} MB max RSS",
            r.peak_memory_bytes as f64 / 1e6,
            r.max_rss_bytes as f64 / 1e6
        ));
        if let Some(b) = &r.batch {
            print_line(&format!(
                "forward        {:.1} ms ({} x {} tokens)",
                b.forward_s * 1e3,
                b.batch,
                b.len
            ));
            print_line(&format!(
                "capture        {:.1} ms (every hook_resid_post, {:.2}x the forward)",
                b.capture_s * 1e3,
                b.capture_ratio
            ));
        }
        let single = r
            .gen_batches
            .iter()
            .find(|g| g.batch == 1)
            .map(|g| g.new_tps);
        for g in &r.gen_batches {
            let ratio = single.map_or(String::new(), |s| {
                format!(", {:.2}x batch 1", g.new_tps / s)
            });
            print_line(&format!(
                "generate x{:<4}  {:.1} new tokens/s ({} rows x {} prompt + {} tokens in {:.2} s{ratio})",
                g.batch, g.new_tps, g.batch, g.len, g.gen_tokens, g.seconds
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_take_their_natural_type() {
        assert_eq!(arg_value("3").as_int().ok(), Some(3));
        assert_eq!(arg_value("-0.5").as_float().ok(), Some(-0.5));
        assert_eq!(arg_value("1e-3").as_float().ok(), Some(1e-3));
        assert_eq!(arg_value("true").as_bool().ok(), Some(true));
        assert!(arg_value("inf").is_string());
        assert!(arg_value("blocks.3").is_string());
        assert!(arg_value("1.2.3").is_string());
    }
}
