//! `import "NAME" as x;`: NAME.rhai from the script's folder, then the user's recipe folders,
//! then the standard library embedded in the binary. Nothing else is read: a name cannot leave
//! the folder it is looked up in (no absolute names, no `..`), and a module file that is a
//! symbolic link leading outside that folder is refused (see [`crate::fsaccess`]). A module
//! that imports itself, directly or through others, is an import cycle and an error.

use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

use include_dir::{include_dir, Dir};
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

use super::Context;
use crate::fsaccess;

/// The recipe library shipped inside the binary.
static STDLIB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/stdlib");

/// How modules from the embedded library are named in sources and error messages.
pub const STDLIB_PREFIX: &str = "<stdlib>/";

/// The names of the embedded library's modules (`util`, ...).
pub fn stdlib_modules() -> Vec<String> {
    let mut names: Vec<String> = STDLIB
        .files()
        .filter_map(|f| {
            let p = f.path();
            (p.extension()? == "rhai").then(|| p.with_extension("").display().to_string())
        })
        .collect();
    names.sort();
    names
}

/// The text of an embedded library module, by file name (`util.rhai`).
pub fn stdlib_source(file: &str) -> Option<&'static str> {
    STDLIB.get_file(file)?.contents_utf8()
}

/// A module's text and the name it goes by in messages (its path, or `<stdlib>/NAME.rhai`).
struct Found {
    /// Its real path, or its name for the embedded library: what import cycles compare.
    key: String,
    name: String,
    text: Rc<str>,
    modified: Option<SystemTime>,
}

pub struct Resolver {
    ctx: Rc<Context>,
}

impl Resolver {
    pub fn new(ctx: Rc<Context>) -> Self {
        Resolver { ctx }
    }

    /// Looks for the module in the contract's order.
    fn find(&self, source: Option<&str>, name: &str) -> Result<Found, String> {
        let file = if name.ends_with(".rhai") {
            name.to_string()
        } else {
            format!("{name}.rhai")
        };
        if Path::new(&file).is_absolute() {
            return Err(format!(
                "import \"{name}\": give a name relative to the script's folder or a recipe folder"
            ));
        }
        if Path::new(&file)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!(
                "import \"{name}\": a module name cannot contain \"..\": modules come only from \
                 the script's folder, the recipe folders and the standard library"
            ));
        }
        let mut searched: Vec<String> = Vec::new();
        // The importing script's own folder: its file's folder, the embedded library for a
        // library module, the base folder for the REPL and -e.
        let from_stdlib = source.is_some_and(|s| s.starts_with(STDLIB_PREFIX));
        let own_dir: Option<PathBuf> = match source {
            _ if from_stdlib => None,
            // A script named relative to the current folder: its modules are named so too.
            Some(s) if !s.is_empty() && !s.starts_with('<') => Some(
                Path::new(s)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            ),
            _ => Some(self.ctx.base_dir().to_path_buf()),
        };
        if from_stdlib {
            if let Some(text) = stdlib_source(&file) {
                return Ok(stdlib_found(&file, text));
            }
        }
        // `std/NAME` is always the standard library's NAME, whatever the folders hold.
        if let Some(own) = file.strip_prefix("std/") {
            return match stdlib_source(own) {
                Some(text) => Ok(stdlib_found(own, text)),
                None => Err(format!(
                    "import \"{name}\": the standard library has no {own}; it has: {}",
                    stdlib_modules().join(", ")
                )),
            };
        }
        // A script never imports itself: `scripts/lens.rhai` importing "lens" gets the next
        // `lens.rhai` in the search order (the standard library's).
        let importer = source
            .filter(|s| !s.is_empty() && !s.starts_with('<'))
            .and_then(|s| Path::new(s).canonicalize().ok());
        for dir in own_dir.iter().chain(self.ctx.recipe_dirs()) {
            let path = dir.join(&file);
            if path.is_file() && path.canonicalize().ok() != importer {
                let real = inside(dir, &path).map_err(|why| format!("import \"{name}\": {why}"))?;
                let text = std::fs::read_to_string(&real)
                    .map_err(|e| format!("import \"{name}\": {}: {e}", path.display()))?;
                let modified = std::fs::metadata(&real).and_then(|m| m.modified()).ok();
                return Ok(Found {
                    key: real.display().to_string(),
                    name: path.display().to_string(),
                    text: text.into(),
                    modified,
                });
            }
            searched.push(dir.display().to_string());
        }
        if let Some(text) = stdlib_source(&file) {
            return Ok(stdlib_found(&file, text));
        }
        searched.push("the standard library".into());
        Err(format!(
            "module \"{name}\" not found (looked for {file} in {}); the standard library has: {}",
            searched.join(", "),
            stdlib_modules().join(", ")
        ))
    }
}

/// The real path of `path`, a module file found in `dir`, if it really lies inside `dir`
/// (a symbolic link may lead anywhere).
fn inside(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let real = |p: &Path| {
        // A script named without a folder has "" as its folder: the current one.
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        std::path::absolute(p)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|a| fsaccess::real_path(&a).map_err(|e| e.to_string()))
    };
    let (root, file) = (real(dir)?, real(path)?);
    if fsaccess::is_within(&file, &root) {
        Ok(file)
    } else {
        Err(format!(
            "{} leads to {}, outside {}: modules are read only from the script's folder, the \
             recipe folders and the standard library",
            path.display(),
            file.display(),
            root.display()
        ))
    }
}

fn stdlib_found(file: &str, text: &'static str) -> Found {
    let name = format!("{STDLIB_PREFIX}{file}");
    Found {
        key: name.clone(),
        name,
        text: text.into(),
        modified: None,
    }
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let found = self
            .find(source, path)
            .map_err(|msg| EvalAltResult::ErrorRuntime(msg.into(), pos))?;
        if let Some(m) = self.ctx.cached_module(&found.name, found.modified) {
            return Ok(m);
        }
        self.ctx.add_source(&found.name, found.text.clone());
        let in_module = |err: Box<EvalAltResult>| {
            Box::new(EvalAltResult::ErrorInModule(found.name.clone(), err, pos))
        };
        let mut ast = engine
            .compile(&*found.text)
            .map_err(|e| in_module(e.into()))?;
        ast.set_source(found.name.as_str());
        self.ctx
            .enter_module(&found.key, &found.name)
            .map_err(|e| EvalAltResult::ErrorRuntime(e.to_string().into(), pos))?;
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine);
        self.ctx.leave_module();
        let mut module = module.map_err(in_module)?;
        module.set_id(found.name.as_str());
        module.build_index();
        let shared: Shared<Module> = module.into();
        self.ctx
            .cache_module(&found.name, found.modified, shared.clone());
        Ok(shared)
    }
}
