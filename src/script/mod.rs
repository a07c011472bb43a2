//! The Rhai embedding: the engine with mlxi's types and verbs, its limits, module resolution,
//! and error reports with positions.
//!
//! Bindings live one group per file, each with a `register(engine)` function that
//! [`new_engine`] calls. A binding returns `RhaiResult<T>` and uses `?` on engine results: a
//! [`crate::Error`] becomes a Rhai runtime error once, here at the boundary, and Rhai adds the
//! script position. Verbs with an options map check it with [`options::Options`].
//!
//! MLX arrays are not thread safe, so Rhai's `sync` feature stays off and everything runs on
//! one thread (the engine thread that `main.rs` starts); shared engine state (a loaded model)
//! is held as `Rc<RefCell<_>>`.

pub mod analysis;
pub mod capture;
pub mod display;
pub mod dist;
pub mod files;
pub mod grad;
pub mod help;
pub mod hooks;
pub mod inspect;
pub mod model;
pub mod modules;
pub mod options;
pub mod patch;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod report;
pub mod results;
pub mod sae;
pub mod scoped;
pub mod stats;
pub mod steer;
pub mod tensor;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use rhai::{
    Dynamic, Engine, EvalAltResult, Map, Module, NativeCallContext, Position, Scope, Shared, AST,
};

use crate::fsaccess::{Grants, Permissions};
use crate::{interrupt, Error};

pub use options::Options;
pub use tensor::Tensor;

/// What a script binding returns.
pub type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Call depth allowed to scripts: deep enough for any real recursion, low enough to stop a
/// runaway one long before the native stack is in danger.
pub const MAX_CALL_LEVELS: usize = 200;

/// Default operation limit: about a minute of a tight script loop, far more than any
/// experiment's scripting needs (the heavy work happens inside MLX, in one operation per call).
/// `MLXI_MAX_OPERATIONS` overrides it; 0 removes it. Ctrl-C stops a script at any time.
pub const DEFAULT_MAX_OPERATIONS: u64 = 1_000_000_000;

/// Default size limits on script values, so that one operation (`s += s` in a loop,
/// `[].pad(n, 0)`) cannot exhaust memory: strings of 64 MiB, arrays (and BLOBs) of 16M
/// elements, maps of 16M entries. `MLXI_MAX_STRING_SIZE`, `MLXI_MAX_ARRAY_SIZE` and
/// `MLXI_MAX_MAP_SIZE` override them; 0 removes them. Tensors are not script arrays and have
/// their own check (memory).
pub const DEFAULT_MAX_STRING_SIZE: usize = 64 << 20;
pub const DEFAULT_MAX_ARRAY_SIZE: usize = 16 << 20;
pub const DEFAULT_MAX_MAP_SIZE: usize = 16 << 20;

/// Nesting depth of expressions at the top level and inside functions: the same in debug and
/// release builds, and far from the parser's stack limits (see [`ENGINE_STACK_SIZE`]).
pub const MAX_EXPR_DEPTH: usize = 128;
pub const MAX_FUNCTION_EXPR_DEPTH: usize = 64;

/// The stack of the thread that runs scripts (and all MLX work): large enough that Rhai's
/// depth limits and mlxi's own nesting checks fire long before the stack would overflow.
pub const ENGINE_STACK_SIZE: usize = 256 << 20;

impl From<Error> for Box<EvalAltResult> {
    fn from(e: Error) -> Self {
        let err = match e {
            Error::Interrupted => {
                EvalAltResult::ErrorTerminated("interrupted".into(), Position::NONE)
            }
            Error::Mlx(e) => {
                EvalAltResult::ErrorRuntime(format!("MLX: {}", e.what()).into(), Position::NONE)
            }
            e => EvalAltResult::ErrorRuntime(e.to_string().into(), Position::NONE),
        };
        Box::new(err)
    }
}

/// A compiled module and the modification time of its file (None for the embedded library).
type CachedModule = (Option<SystemTime>, Shared<Module>);

/// An engine result as a script result, the error placed at the call: for functions of static
/// modules (`stats::...`), whose errors Rhai leaves without a position.
pub fn located<T>(ctx: &NativeCallContext, r: crate::Result<T>) -> RhaiResult<T> {
    r.map_err(|e| {
        let mut err: Box<EvalAltResult> = e.into();
        if err.position().is_none() {
            err.set_position(ctx.call_position());
        }
        err
    })
}

/// Where a script runs: what it may touch (its folder, which relative paths resolve against,
/// its output folder, granted paths and the network; see [`crate::fsaccess`]), the recipe
/// folders `import` searches, the modules being imported (to report cycles), and the sources
/// seen so far (for error messages).
pub struct Context {
    perms: Permissions,
    recipe_dirs: Vec<PathBuf>,
    sources: RefCell<HashMap<String, Rc<str>>>,
    modules: RefCell<HashMap<String, CachedModule>>,
    /// The script and the modules being evaluated, outermost first: (real path or library
    /// name, name in messages).
    importing: RefCell<Vec<(String, String)>>,
}

impl Context {
    /// A context for a script in `base_dir` with the default permissions (its folder and
    /// `base_dir/out`, no network); recipe folders are `$MLXI_HOME/recipes` and the paths in
    /// `MLXI_RECIPES`.
    pub fn new(base_dir: impl Into<PathBuf>) -> Rc<Self> {
        let base: PathBuf = base_dir.into();
        let perms = Permissions::script(&base, None, &Grants::default())
            .unwrap_or_else(|_| Permissions::unresolved(&base));
        Context::with_permissions(perms)
    }

    /// A context with the given permissions; relative paths resolve against `perms.base()`.
    pub fn with_permissions(perms: Permissions) -> Rc<Self> {
        let mut recipe_dirs: Vec<PathBuf> = Vec::new();
        if let Some(paths) = std::env::var_os("MLXI_RECIPES") {
            recipe_dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
        }
        recipe_dirs.push(mlxi_home().join("recipes"));
        Rc::new(Context {
            perms,
            recipe_dirs,
            sources: RefCell::default(),
            modules: RefCell::default(),
            importing: RefCell::default(),
        })
    }

    /// A context for code typed at the REPL or given with `-e`: the current folder is the
    /// script folder and the output folder, and the network is allowed.
    pub fn in_current_dir() -> Rc<Self> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let perms = Permissions::interactive(&cwd, &Grants::default())
            .unwrap_or_else(|_| Permissions::unresolved(&cwd));
        Context::with_permissions(perms)
    }

    pub fn base_dir(&self) -> &Path {
        self.perms.base()
    }

    pub fn permissions(&self) -> &Permissions {
        &self.perms
    }

    pub fn recipe_dirs(&self) -> &[PathBuf] {
        &self.recipe_dirs
    }

    /// A path from a script, resolved but not checked: `~/` is the home folder, a relative
    /// path is relative to the base folder, links and `..` followed (for the REPL's `:load`,
    /// which the person at the prompt types).
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        self.perms
            .resolve(path)
            .unwrap_or_else(|_| self.base_dir().join(path))
    }

    /// The real path of a file `verb` reads, if the script may read it.
    pub fn read_path(&self, verb: &str, path: &str) -> crate::Result<PathBuf> {
        self.perms.read(verb, path)
    }

    /// The real path of a file `verb` writes, if the script may write it.
    /// In a group of processes, only rank 0 writes the real file; the others write a scratch
    /// copy ([`crate::distributed::write_target`]).
    pub fn write_path(&self, verb: &str, path: &str) -> crate::Result<PathBuf> {
        let real = self.perms.write(verb, path)?;
        crate::distributed::write_target(&real)
    }

    /// Starts evaluating the module `key` (a real path or a library name); an error naming the
    /// chain when it is already being evaluated (A imports B imports A).
    pub fn enter_module(&self, key: &str, name: &str) -> crate::Result<()> {
        let mut stack = self.importing.borrow_mut();
        if let Some(i) = stack.iter().position(|(k, _)| k == key) {
            let chain: Vec<&str> = stack[i..]
                .iter()
                .map(|(_, n)| n.as_str())
                .chain([name])
                .collect();
            return Err(Error::Invalid(format!(
                "import cycle: {}",
                chain.join(" imports ")
            )));
        }
        stack.push((key.to_string(), name.to_string()));
        Ok(())
    }

    /// Ends the evaluation of the innermost module.
    pub fn leave_module(&self) {
        self.importing.borrow_mut().pop();
    }

    /// Remembers a source text for error messages.
    pub fn add_source(&self, name: &str, text: impl Into<Rc<str>>) {
        self.sources
            .borrow_mut()
            .insert(name.to_string(), text.into());
    }

    pub fn source(&self, name: &str) -> Option<Rc<str>> {
        self.sources.borrow().get(name).cloned()
    }

    fn cached_module(&self, name: &str, modified: Option<SystemTime>) -> Option<Shared<Module>> {
        let modules = self.modules.borrow();
        let (when, m) = modules.get(name)?;
        (*when == modified).then(|| m.clone())
    }

    fn cache_module(&self, name: &str, modified: Option<SystemTime>, m: Shared<Module>) {
        self.modules
            .borrow_mut()
            .insert(name.to_string(), (modified, m));
    }
}

/// The context of the engine running a native function.
pub fn context(ctx: &NativeCallContext) -> Rc<Context> {
    ctx.engine()
        .default_tag()
        .read_lock::<Rc<Context>>()
        .map(|c| c.clone())
        .unwrap_or_else(Context::in_current_dir)
}

/// mlxi's own folder: `$MLXI_HOME`, by default `~/.cache/mlxi`.
pub fn mlxi_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MLXI_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/mlxi"))
        .unwrap_or_else(|| PathBuf::from(".mlxi"))
}

/// Writes a line to stdout, ignoring a closed pipe (`mlxi run x.rhai | head`), above any
/// progress bars.
pub fn print_line(s: &str) {
    progress::suspend(|| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    });
}

/// Writes text without a newline and flushes it, for output that streams (generated tokens).
pub fn print_text(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// A limit from the environment variable `var` (digits, `_` allowed), else `default`.
fn limit_from_env<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The operation limit in force: `MLXI_MAX_OPERATIONS`, or [`DEFAULT_MAX_OPERATIONS`].
fn max_operations() -> u64 {
    limit_from_env("MLXI_MAX_OPERATIONS", DEFAULT_MAX_OPERATIONS)
}

/// An engine with every mlxi binding, the safety limits, Ctrl-C checks, printing to stdout,
/// and `import` resolved through `ctx`.
pub fn new_engine(ctx: Rc<Context>) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_call_levels(MAX_CALL_LEVELS);
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH);
    engine.set_max_operations(max_operations());
    engine.set_max_string_size(limit_from_env(
        "MLXI_MAX_STRING_SIZE",
        DEFAULT_MAX_STRING_SIZE,
    ));
    engine.set_max_array_size(limit_from_env(
        "MLXI_MAX_ARRAY_SIZE",
        DEFAULT_MAX_ARRAY_SIZE,
    ));
    engine.set_max_map_size(limit_from_env("MLXI_MAX_MAP_SIZE", DEFAULT_MAX_MAP_SIZE));
    engine.on_progress(|_| interrupt::requested().then(|| Dynamic::from("interrupted")));
    engine.on_print(print_line);
    engine.on_debug(|s, src, pos| match (src, pos.line()) {
        (Some(src), Some(line)) => print_line(&format!("{src}:{line}: {s}")),
        (None, Some(line)) => print_line(&format!("{line}: {s}")),
        _ => print_line(s),
    });
    engine.set_module_resolver(modules::Resolver::new(ctx.clone()));
    engine.set_default_tag(Dynamic::from(ctx));

    tensor::register(&mut engine);
    stats::register(&mut engine);
    options::register(&mut engine);
    files::register(&mut engine);
    model::register(&mut engine);
    hooks::register(&mut engine);
    capture::register(&mut engine);
    steer::register(&mut engine);
    scoped::register(&mut engine);
    probe::register(&mut engine);
    analysis::register(&mut engine);
    inspect::register(&mut engine);
    plot::register(&mut engine);
    patch::register(&mut engine);
    grad::register(&mut engine);
    progress::register(&mut engine);
    results::register(&mut engine);
    sae::register(&mut engine);
    dist::register(&mut engine);
    engine
}

/// Extra names for the REPL's tab completion, taken from the live scope after each command:
/// the hook names of the models in scope go here.
pub fn completion_names(scope: &Scope) -> Vec<String> {
    let mut layers: Vec<usize> = scope
        .iter_raw()
        .filter_map(|(_, _, v)| {
            v.read_lock::<model::ModelHandle>()
                .map(|m| m.0.try_borrow().map_or(0, |m| m.info.n_layers))
        })
        .collect();
    layers.sort();
    layers.dedup();
    layers
        .into_iter()
        .flat_map(|n| {
            crate::hooks::HookName::all(n)
                .into_iter()
                .map(|h| h.to_string())
        })
        .collect()
}

/// A script engine with its context: runs files and snippets, and reports errors as
/// `FILE:LINE:COL: message` with the offending line.
pub struct Runner {
    pub engine: Engine,
    pub ctx: Rc<Context>,
}

impl Runner {
    pub fn new(ctx: Rc<Context>) -> Self {
        Runner {
            engine: new_engine(ctx.clone()),
            ctx,
        }
    }

    /// Compiles `code`, named `name` in messages (a path, or `<repl>`, `<-e>`).
    pub fn compile(&self, name: &str, code: &str, scope: &Scope) -> crate::Result<AST> {
        self.ctx.add_source(name, code);
        let mut ast = self
            .engine
            .compile_with_scope(scope, code)
            .map_err(|e| Error::Script(report::parse(&e, name, &self.ctx)))?;
        if !name.starts_with('<') {
            ast.set_source(name);
        }
        Ok(ast)
    }

    /// Evaluates `ast` in `scope`; an error becomes [`Error::Interrupted`] or an
    /// [`Error::Script`] report.
    pub fn eval(&self, name: &str, ast: &AST, scope: &mut Scope) -> crate::Result<Dynamic> {
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, ast)
            .map_err(|e| self.error(&e, name))
    }

    /// The error as the user sees it.
    pub fn error(&self, err: &EvalAltResult, name: &str) -> Error {
        if matches!(err.unwrap_inner(), EvalAltResult::ErrorTerminated(..)) {
            return Error::Interrupted;
        }
        Error::Script(report::runtime(err, &self.engine, &self.ctx, name))
    }

    /// Runs a script file with `args` in scope.
    pub fn run_file(&self, path: &Path, args: Map) -> crate::Result<Dynamic> {
        let code = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        let mut scope = Scope::new();
        scope.push("args", args);
        let ast = self.compile(&name, &code, &scope)?;
        let key = std::path::absolute(path)
            .map_err(|e| Error::io(path, e))
            .and_then(|p| crate::fsaccess::real_path(&p))
            .map_or_else(|_| name.clone(), |p| p.display().to_string());
        self.ctx.enter_module(&key, &name)?;
        let r = self.eval(&name, &ast, &mut scope);
        self.ctx.leave_module();
        r
    }

    /// Evaluates a snippet (`mlxi -e`).
    pub fn eval_code(&self, name: &str, code: &str) -> crate::Result<Dynamic> {
        let mut scope = Scope::new();
        let ast = self.compile(name, code, &scope)?;
        self.eval(name, &ast, &mut scope)
    }
}
