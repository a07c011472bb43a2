//! Which files a script may read and write, and whether it may use the network: the one place
//! where every path a script gives is resolved and checked, so the rule is written once.
//!
//! Recipes are shared like code, so running someone else's `.rhai` file must be as harmless as
//! opening a web page. By default (in the spirit of Deno) a script:
//!
//! - reads only inside its own folder and its output folder;
//! - writes only inside those two folders, replaces existing files only inside the output
//!   folder, and never writes a `.rhai` file (it could become a module that another script
//!   imports);
//! - cannot reach the network.
//!
//! `--allow-read PATH`, `--allow-write PATH` (which also allows reading it) and `--allow-net`
//! widen that. The REPL and `-e` use the current folder as both folders and may use the
//! network: the person typing is the author.
//!
//! A path is resolved before it is checked: `~/` is the home folder, a relative path is
//! relative to the script's folder, and every symbolic link and `..` is followed to the real
//! location, so a link inside the output folder that points outside it is refused. Loading a
//! model is not checked (reading weights is the point); imports are checked by
//! `script::modules` with [`real_path`] and [`is_within`].

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The widening given on the command line: `--allow-read`, `--allow-write`, `--allow-net`.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub net: bool,
}

/// What a script may touch: its folder, its output folder, the granted paths and the network.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// The folder relative paths resolve against: the script's folder, or the current folder
    /// in the REPL and with `-e`. Real (symbolic links resolved).
    base: PathBuf,
    /// Where the script writes its results; existing files here may be replaced. Real.
    out: PathBuf,
    /// Extra readable paths (`--allow-read`), real.
    read: Vec<PathBuf>,
    /// Extra writable paths (`--allow-write`), real; each may also be read.
    write: Vec<PathBuf>,
    net: bool,
    /// Whether `.rhai` files may be written without a grant (the REPL: the author is typing).
    write_scripts: bool,
    /// How the defaults were chosen, for the messages: "a script" or "the REPL".
    who: &'static str,
}

impl Permissions {
    /// A script run with `mlxi run`: `dir` is its folder; `out` its output folder (default
    /// `dir/out`), a relative `out` being relative to `dir`.
    pub fn script(dir: &Path, out: Option<&Path>, grants: &Grants) -> Result<Self> {
        let base = real_path(&absolute(dir)?)?;
        let out = match out {
            Some(o) => real_path(&base.join(expand_home(o)))?,
            None => base.join("out"),
        };
        Permissions::with(base, out, grants, false, "a script")
    }

    /// The REPL and `-e`: the current folder (or `dir`) is both the folder and the output
    /// folder, and the network is allowed.
    pub fn interactive(dir: &Path, grants: &Grants) -> Result<Self> {
        let base = real_path(&absolute(dir)?)?;
        let mut p = Permissions::with(base.clone(), base, grants, true, "the REPL")?;
        p.net = true;
        Ok(p)
    }

    /// The defaults for a script in `dir`, taking `dir` as it is: for when it cannot be
    /// resolved (a current folder that was removed).
    pub fn unresolved(dir: &Path) -> Self {
        Permissions {
            base: dir.to_path_buf(),
            out: dir.join("out"),
            read: Vec::new(),
            write: Vec::new(),
            net: false,
            write_scripts: false,
            who: "a script",
        }
    }

    fn with(
        base: PathBuf,
        out: PathBuf,
        grants: &Grants,
        write_scripts: bool,
        who: &'static str,
    ) -> Result<Self> {
        let real_all = |ps: &[PathBuf]| -> Result<Vec<PathBuf>> {
            ps.iter()
                .map(|p| real_path(&absolute(&expand_home(p))?))
                .collect()
        };
        Ok(Permissions {
            base,
            out,
            read: real_all(&grants.read)?,
            write: real_all(&grants.write)?,
            net: grants.net,
            write_scripts,
            who,
        })
    }

    /// The folder relative paths resolve against.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Whether the network may be used.
    pub fn net_allowed(&self) -> bool {
        self.net
    }

    /// A path as a script gives it, resolved to its real location: `~/` is the home folder,
    /// a relative path is relative to [`Permissions::base`], links and `..` are followed.
    /// Nothing is checked.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        real_path(&self.base.join(expand_home(Path::new(path))))
    }

    /// The real path of a file `verb` wants to read, if the script may read it.
    pub fn read(&self, verb: &str, path: &str) -> Result<PathBuf> {
        let p = self.resolve(path)?;
        let granted = self
            .read
            .iter()
            .chain(&self.write)
            .any(|g| is_within(&p, g));
        if granted || is_within(&p, &self.base) || is_within(&p, &self.out) {
            return Ok(p);
        }
        Err(Error::Denied(format!(
            "{verb}: may not read {}: {} reads only inside {}; to allow it, run with \
             --allow-read {}",
            p.display(),
            self.who,
            self.places(),
            p.display()
        )))
    }

    /// The real path of a file `verb` wants to write (create or replace), if the script may.
    pub fn write(&self, verb: &str, path: &str) -> Result<PathBuf> {
        let p = self.resolve(path)?;
        if self.write.iter().any(|g| is_within(&p, g)) {
            return Ok(p);
        }
        let hint = format!("to allow it, run with --allow-write {}", p.display());
        let in_out = is_within(&p, &self.out);
        if !in_out && !is_within(&p, &self.base) {
            return Err(Error::Denied(format!(
                "{verb}: may not write {}: {} writes only inside {}; {hint}",
                p.display(),
                self.who,
                self.places()
            )));
        }
        let is_script = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("rhai"));
        if is_script && !self.write_scripts {
            return Err(Error::Denied(format!(
                "{verb}: may not write {}: a script does not write .rhai files (one could be \
                 imported as a module by another script); {hint}",
                p.display()
            )));
        }
        if !in_out && std::fs::symlink_metadata(&p).is_ok() {
            return Err(Error::Denied(format!(
                "{verb}: may not replace {}: it exists, and outside its output folder ({}) {} \
                 only creates new files; {hint}",
                p.display(),
                self.out.display(),
                self.who
            )));
        }
        Ok(p)
    }

    /// The default folders in words, for messages.
    fn places(&self) -> String {
        if self.out == self.base {
            format!("its folder ({})", self.base.display())
        } else {
            format!(
                "its folder ({}) and its output folder ({})",
                self.base.display(),
                self.out.display()
            )
        }
    }

    /// Whether the network may be used for `what` (a sentence naming the download).
    pub fn net(&self, what: &str) -> Result<()> {
        if self.net {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "{what} needs the network, which {} may not use; to allow it, run with --allow-net",
            self.who
        )))
    }

    /// One line per rule, for the REPL banner and `--help`-like listings.
    pub fn describe(&self) -> String {
        let mut s = format!("files: reads and writes in {}", self.base.display());
        if self.out != self.base {
            s.push_str(&format!(" and {}", self.out.display()));
        }
        for r in &self.read {
            s.push_str(&format!("; reads {}", r.display()));
        }
        for w in &self.write {
            s.push_str(&format!("; writes {}", w.display()));
        }
        s.push_str(if self.net {
            "; network: allowed"
        } else {
            "; network: off"
        });
        s
    }
}

/// The home folder, from the `home` crate (`$HOME`, else the user database).
pub fn home_dir() -> Option<PathBuf> {
    home::home_dir()
}

/// `~` and `~/rest` as the home folder; anything else as it is.
pub fn expand_home(path: &Path) -> PathBuf {
    let Some(s) = path.to_str() else {
        return path.to_path_buf();
    };
    let rest = match s {
        "~" => "",
        _ => match s.strip_prefix("~/") {
            Some(r) => r,
            None => return path.to_path_buf(),
        },
    };
    match home_dir() {
        Some(h) => h.join(rest),
        None => path.to_path_buf(),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    Ok(cwd.join(p))
}

/// Where an absolute path really leads: each symbolic link on the way is followed (as the
/// system would when opening it) and `..` goes to the real parent, for the part that exists;
/// the rest is appended as written. A link to nothing, or a loop of links, is an error: a
/// write through one would land wherever it points.
pub fn real_path(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                let is_link = std::fs::symlink_metadata(&out)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    out = std::fs::canonicalize(&out).map_err(|e| {
                        Error::Denied(format!(
                            "{}: a symbolic link that leads nowhere ({e})",
                            out.display()
                        ))
                    })?;
                }
            }
        }
    }
    Ok(out)
}

/// Whether `path` is `root` or inside it (both real, as [`real_path`] gives them).
pub fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temporary folder")
    }

    #[test]
    fn real_paths_follow_links_and_parents() -> Result<()> {
        let d = tmp();
        let root = real_path(d.path())?;
        std::fs::create_dir_all(root.join("a/b")).map_err(|e| Error::io("a/b", e))?;
        std::os::unix::fs::symlink("/etc", root.join("a/link")).map_err(|e| Error::io("l", e))?;
        assert_eq!(real_path(&root.join("a/b/../c"))?, root.join("a/c"));
        assert_eq!(
            real_path(&root.join("a/link/x"))?,
            real_path(Path::new("/etc/x"))?
        );
        // `..` after a link leaves the link's target, as the system does.
        let etc_parent = real_path(Path::new("/etc"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        assert_eq!(real_path(&root.join("a/link/.."))?, etc_parent);
        assert_eq!(real_path(&root.join("new/x/../y"))?, root.join("new/y"));
        std::os::unix::fs::symlink(root.join("nothing"), root.join("dangling"))
            .map_err(|e| Error::io("l", e))?;
        assert!(real_path(&root.join("dangling/x")).is_err());
        Ok(())
    }

    #[test]
    fn a_script_writes_in_its_folders_only() -> Result<()> {
        let d = tmp();
        let base = real_path(d.path())?;
        std::fs::create_dir_all(base.join("out")).map_err(|e| Error::io("out", e))?;
        std::fs::write(base.join("notes.txt"), "x").map_err(|e| Error::io("n", e))?;
        std::fs::write(base.join("out/r.json"), "{}").map_err(|e| Error::io("r", e))?;
        let p = Permissions::script(&base, None, &Grants::default())?;
        assert_eq!(p.write("save", "out/r.json")?, base.join("out/r.json"));
        assert_eq!(p.write("save", "new.json")?, base.join("new.json"));
        let denied = |r: Result<PathBuf>| match r {
            Err(Error::Denied(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(denied(p.write("save", "notes.txt")).contains("may not replace"));
        assert!(denied(p.write("save", "lib.rhai")).contains(".rhai"));
        assert!(denied(p.write("save", "../x.json")).contains("--allow-write"));
        assert!(denied(p.write("save", "/etc/x.json")).contains("may not write"));
        assert!(denied(p.read("load", "/etc/hostname")).contains("--allow-read"));
        assert!(p.net("download").is_err());
        // Grants widen it.
        let g = Grants {
            read: vec![PathBuf::from("/etc")],
            write: vec![base.join("notes.txt")],
            net: true,
        };
        let p = Permissions::script(&base, None, &g)?;
        assert!(p.read("load", "/etc/hostname").is_ok());
        assert!(p.write("save", "notes.txt").is_ok());
        assert!(p.write("save", "/etc/x").is_err());
        assert!(p.net("download").is_ok());
        Ok(())
    }
}
