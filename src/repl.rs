//! The interactive shell: one persistent scope, function definitions and imports that survive
//! across lines, multi-line input (rustyline's `Validator` asks Rhai's parser whether the buffer
//! is finished, so a block being typed stays one editable buffer), tab completion,
//! `:commands`, history in `$MLXI_HOME/history`, and Ctrl-C that stops the running command
//! without losing the session.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rhai::{ParseErrorType, Position, Scope, AST};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{CompletionType, Config, Editor, Helper};

use crate::script::{display, help, mlxi_home, print_line, Context, Runner};
use crate::{interrupt, Error};

const PROMPT: &str = "mlxi> ";
/// Shown (as a hint) at the start of each new line of an unfinished input.
const CONTINUE: &str = "  ... ";
/// How code typed at the prompt is named in error messages.
const INPUT_NAME: &str = "<repl>";

/// What a `:command` does.
struct Command {
    name: &'static str,
    args: &'static str,
    about: &'static str,
    run: fn(&mut Repl, &str) -> Flow,
}

enum Flow {
    Continue,
    Quit,
}

/// The one table of commands: it drives dispatch, `:help` and completion.
const COMMANDS: &[Command] = &[
    Command {
        name: ":help",
        args: "[NAME]",
        about: "list the functions and commands, or show NAME's documentation",
        run: Repl::cmd_help,
    },
    Command {
        name: ":vars",
        args: "",
        about: "the variables in scope and their values",
        run: Repl::cmd_vars,
    },
    Command {
        name: ":load",
        args: "FILE",
        about: "run a script file into the current scope (its functions and variables stay)",
        run: Repl::cmd_load,
    },
    Command {
        name: ":models",
        args: "",
        about: "the models found locally (the default model and the Hugging Face cache)",
        run: Repl::cmd_models,
    },
    Command {
        name: ":quit",
        args: "",
        about: "leave the shell (also Ctrl-D, or Ctrl-C twice at an empty prompt)",
        run: |_, _| Flow::Quit,
    },
];

/// Whether the text typed so far is a whole input.
#[derive(Debug, PartialEq, Eq)]
pub enum Completeness {
    /// Parses (or fails for a reason more text cannot fix): run it now.
    Complete,
    /// Ends in the middle of something (an open brace, a call missing its `)`): keep reading.
    Incomplete,
}

/// Decides from Rhai's parse result whether `code` needs more lines: an error at the very end
/// of the input means "unfinished", any other error is shown at once.
pub fn completeness(engine: &rhai::Engine, code: &str) -> Completeness {
    let Err(err) = engine.compile(code) else {
        return Completeness::Complete;
    };
    let at_end = is_at_end(code, err.position());
    match err.err_type() {
        ParseErrorType::UnexpectedEOF => Completeness::Incomplete,
        ParseErrorType::MissingToken(..) | ParseErrorType::MissingSymbol(..) if at_end => {
            Completeness::Incomplete
        }
        ParseErrorType::BadInput(rhai::LexError::UnterminatedString) => Completeness::Incomplete,
        _ => Completeness::Complete,
    }
}

/// True when `pos` lies past the last non-blank character of `code`.
fn is_at_end(code: &str, pos: Position) -> bool {
    let (Some(line), col) = (pos.line(), pos.position().unwrap_or(0)) else {
        return true;
    };
    let lines: Vec<&str> = code.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    if line != last {
        return line > last;
    }
    let width = lines
        .get(line - 1)
        .map_or(0, |l| l.trim_end().chars().count());
    col > width
}

/// Whether Enter should run the buffer `input` now: a `:command`, an empty buffer, an input that
/// parses (or fails for a reason more text cannot fix), or an unfinished one ended by Enter on an
/// empty line (its error is shown at once).
pub fn ready(engine: &rhai::Engine, input: &str) -> bool {
    let trimmed = input.trim();
    let on_empty_line = input.contains('\n')
        && input
            .rsplit('\n')
            .next()
            .is_some_and(|l| l.trim().is_empty());
    trimmed.is_empty()
        || trimmed.starts_with(':')
        || on_empty_line
        || completeness(engine, &format!("{input}\n")) == Completeness::Complete
}

/// Top-level `import "NAME" as alias;` statements of an input.
fn imports(code: &str) -> Vec<(String, String)> {
    code.split([';', '\n'])
        .filter_map(|stmt| {
            let rest = stmt.trim().strip_prefix("import")?.trim_start();
            let rest = rest.strip_prefix('"')?;
            let (path, rest) = rest.split_once('"')?;
            let alias = rest.trim().strip_prefix("as")?.trim();
            let ok = !alias.is_empty() && alias.chars().all(|c| c.is_alphanumeric() || c == '_');
            ok.then(|| (path.to_string(), alias.to_string()))
        })
        .collect()
}

/// The editor's helper: tab completion over a shared list of names (refreshed after each
/// command), and multi-line input through [`Validator`].
struct ShellHelper {
    names: Rc<RefCell<Vec<String>>>,
    /// Parses the buffer for [`ready`] (parsing needs no bindings, only the session's limits).
    parser: rhai::Engine,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, candidates) = complete(line, pos, &self.names.borrow());
        let pairs = candidates
            .into_iter()
            .map(|c| Pair {
                display: c.clone(),
                replacement: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// The start of the word before `pos` and the names that complete it. Inside a string the word
/// may hold dots (`"blocks.3.hook_`); after a `.` only the part after it is completed (methods).
pub fn complete(line: &str, pos: usize, names: &[String]) -> (usize, Vec<String>) {
    let before = &line[..pos.min(line.len())];
    let in_string = before.chars().filter(|&c| c == '"').count() % 2 == 1;
    let word_char = |c: char| {
        c.is_alphanumeric() || c == '_' || c == ':' || (in_string && matches!(c, '.' | '*' | '-'))
    };
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !word_char(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    let after_dot = before[..start].ends_with('.');
    if word.is_empty() && !in_string && !after_dot {
        return (start, Vec::new());
    }
    let mut found: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(word) && n.as_str() != word)
        .filter(|n| in_string == n.contains('.') || in_string)
        .cloned()
        .collect();
    found.sort();
    found.dedup();
    (start, found)
}

impl Hinter for ShellHelper {
    type Hint = String;

    /// The continuation marker on the empty new line of an unfinished input.
    fn hint(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> Option<String> {
        (pos == line.len() && line.ends_with('\n')).then(|| CONTINUE.to_string())
    }
}
impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for ShellHelper {
    /// Enter runs the buffer when it is [`ready`]; otherwise it adds a line to it.
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if ready(&self.parser, ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}
impl Helper for ShellHelper {}

/// The shell's state between lines.
pub struct Repl {
    runner: Runner,
    scope: Scope<'static>,
    /// Every function defined so far (statements are dropped after each run).
    functions: AST,
    help: help::Index,
    names: Rc<RefCell<Vec<String>>>,
}

impl Repl {
    /// A shell in the current folder with the default permissions (see
    /// [`crate::fsaccess::Permissions::interactive`]).
    pub fn new() -> Self {
        Repl::with_context(Context::in_current_dir())
    }

    /// A shell whose code runs in `ctx` (its folder and permissions).
    pub fn with_context(ctx: Rc<Context>) -> Self {
        let runner = Runner::new(ctx);
        let help = help::Index::build(&runner.engine);
        let repl = Repl {
            runner,
            scope: Scope::new(),
            functions: AST::empty(),
            help,
            names: Rc::default(),
        };
        repl.refresh_names();
        repl
    }

    /// Runs the shell until `:quit`, Ctrl-D or Ctrl-C twice.
    pub fn run(mut self) -> crate::Result<()> {
        interrupt::install_handler(false)?;
        crate::script::model::set_streaming(true);
        let config = Config::builder()
            .completion_type(CompletionType::List)
            .max_history_size(10_000)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .history_ignore_dups(true)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .build();
        let mut editor: Editor<ShellHelper, DefaultHistory> =
            Editor::with_config(config).map_err(|e| Error::Invalid(format!("terminal: {e}")))?;
        let mut parser = rhai::Engine::new_raw();
        parser.set_max_expr_depths(
            crate::script::MAX_EXPR_DEPTH,
            crate::script::MAX_FUNCTION_EXPR_DEPTH,
        );
        editor.set_helper(Some(ShellHelper {
            names: self.names.clone(),
            parser,
        }));
        let history = history_path();
        let _ = editor.load_history(&history);

        print_line(&format!(
            "mlxi {}: type :help for help, Ctrl-D to leave.",
            env!("CARGO_PKG_VERSION")
        ));
        print_line(&format!(
            "{} (--allow-read, --allow-write, --allow-net widen it)",
            self.runner.ctx.permissions().describe()
        ));
        let mut interrupted_once = false;
        loop {
            match editor.readline(PROMPT) {
                Ok(input) => {
                    interrupted_once = false;
                    let code = input.trim_end();
                    if code.trim().is_empty() {
                        continue;
                    }
                    let command = code.trim_start().starts_with(':');
                    let _ = editor.add_history_entry(if command { code.trim() } else { code });
                    if command {
                        if let Flow::Quit = self.command(code.trim()) {
                            break;
                        }
                        continue;
                    }
                    self.submit(code);
                }
                Err(ReadlineError::Interrupted) => {
                    if interrupted_once {
                        break;
                    }
                    interrupted_once = true;
                    print_line("(Ctrl-C again or Ctrl-D to leave)");
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("terminal: {e}");
                    break;
                }
            }
        }
        if let Some(dir) = history.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(&history);
        Ok(())
    }

    /// Compiles and runs one input; prints its value or its error.
    pub fn submit(&mut self, code: &str) {
        let result = self.eval(code);
        crate::script::progress::clear_all();
        match result {
            Ok(Some(text)) => print_line(&text),
            Ok(None) => {}
            Err(Error::Interrupted) => interrupted(),
            Err(e) => eprintln!("{e}"),
        }
    }

    /// Runs one input in the session; `Ok(Some(text))` is the value to show.
    pub fn eval(&mut self, code: &str) -> crate::Result<Option<String>> {
        interrupt::clear();
        let ast = self.runner.compile(INPUT_NAME, code, &self.scope)?;
        self.functions = self.functions.merge(&ast);
        let result = self
            .runner
            .eval(INPUT_NAME, &self.functions, &mut self.scope);
        self.functions.clear_statements();
        let value = result?;
        self.keep_imports(code, None)?;
        self.refresh_names();
        Ok(display::show(&value))
    }

    /// Makes the input's top-level imports available to the following lines too. `source` is
    /// the file the code came from (its imports resolve beside it).
    fn keep_imports(&mut self, code: &str, source: Option<&str>) -> crate::Result<()> {
        let found = imports(code);
        if found.is_empty() {
            return Ok(());
        }
        for (path, alias) in found {
            let module = self
                .runner
                .engine
                .module_resolver()
                .resolve(&self.runner.engine, source, &path, Position::NONE)
                .map_err(|e| self.runner.error(&e, INPUT_NAME))?;
            self.runner.engine.register_static_module(alias, module);
        }
        self.help = help::Index::build(&self.runner.engine);
        Ok(())
    }

    /// Function names, variables, commands and engine-provided names (hook names) for Tab.
    fn refresh_names(&self) {
        let mut names: Vec<String> = self.help.all_names().to_vec();
        names.extend(self.scope.iter().map(|(n, ..)| n.to_string()));
        names.extend(self.functions.iter_functions().map(|f| f.name.to_string()));
        names.extend(COMMANDS.iter().map(|c| c.name.to_string()));
        names.extend(
            [
                "let", "const", "fn", "if", "else", "for", "in", "while", "loop", "break",
                "continue", "return", "import", "as", "true", "false", "print", "throw", "try",
                "catch", "switch",
            ]
            .map(String::from),
        );
        names.extend(crate::script::completion_names(&self.scope));
        names.sort();
        names.dedup();
        *self.names.borrow_mut() = names;
    }

    fn command(&mut self, line: &str) -> Flow {
        let (name, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let matching: Vec<&Command> = COMMANDS
            .iter()
            .filter(|c| c.name.starts_with(name))
            .collect();
        match matching.as_slice() {
            [c] => (c.run)(self, arg.trim()),
            _ => {
                let exact = COMMANDS.iter().find(|c| c.name == name);
                match exact {
                    Some(c) => (c.run)(self, arg.trim()),
                    None => {
                        let all: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
                        eprintln!("unknown command {name}; commands: {}", all.join(", "));
                        Flow::Continue
                    }
                }
            }
        }
    }

    fn cmd_help(&mut self, arg: &str) -> Flow {
        if arg.is_empty() {
            print_line(&self.help_overview());
            return Flow::Continue;
        }
        if let Some(c) = COMMANDS
            .iter()
            .find(|c| c.name == arg || &c.name[1..] == arg)
        {
            print_line(&format!("{} {}\n  {}", c.name, c.args, c.about));
            return Flow::Continue;
        }
        if let Some(e) = self.help.get(arg) {
            print_line(&e.render());
            return Flow::Continue;
        }
        let module: Vec<&str> = self
            .help
            .names()
            .filter(|n| n.starts_with(&format!("{arg}::")))
            .collect();
        if !module.is_empty() {
            print_line(&columns(&module));
            return Flow::Continue;
        }
        if let Some(f) = self.functions.iter_functions().find(|f| f.name == arg) {
            let doc: Vec<&str> = f
                .comments
                .iter()
                .map(|c| c.trim_start_matches("///").trim())
                .collect();
            print_line(&format!(
                "fn {}({})\n\n{}",
                f.name,
                f.params.join(", "),
                doc.join("\n")
            ));
            return Flow::Continue;
        }
        let close: Vec<&str> = self
            .help
            .names()
            .filter(|n| n.contains(arg.trim_start_matches('.')))
            .collect();
        if close.is_empty() {
            eprintln!("no function named {arg}; :help lists them");
        } else {
            eprintln!(
                "no function named {arg}; did you mean: {}",
                close.join(", ")
            );
        }
        Flow::Continue
    }

    fn help_overview(&self) -> String {
        let mut out = String::from("Commands:\n");
        let width = COMMANDS
            .iter()
            .map(|c| c.name.len() + c.args.len() + 1)
            .max()
            .unwrap_or(0);
        for c in COMMANDS {
            let usage = format!("{} {}", c.name, c.args);
            out.push_str(&format!("  {usage:width$}  {}\n", c.about));
        }
        out.push_str(
            "\nKeys: Tab completes, Up/Down browse history, Enter on an empty line runs an \
             unfinished input,\n      Ctrl-C stops the running command, Ctrl-D leaves.\n",
        );
        out.push_str("\nFunctions (:help NAME for one):\n");
        let names: Vec<&str> = self.help.names().collect();
        out.push_str(&columns(&names));
        out
    }

    fn cmd_vars(&mut self, _arg: &str) -> Flow {
        let rows: Vec<(String, String)> = self
            .scope
            .iter_raw()
            .map(|(name, _, value)| {
                let mut v = display::inline(value);
                if v.chars().count() > 90 {
                    v = v.chars().take(87).collect::<String>() + "...";
                }
                (name.to_string(), v)
            })
            .collect();
        if rows.is_empty() {
            print_line("(no variables)");
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        for (name, value) in rows {
            print_line(&format!("{name:width$} = {value}"));
        }
        Flow::Continue
    }

    fn cmd_models(&mut self, _arg: &str) -> Flow {
        let found = crate::model::source::list_local();
        if found.is_empty() {
            print_line("(no models found: run ./setup for the default model)");
        }
        let width = found.iter().map(|m| m.source.len()).max().unwrap_or(0);
        for m in found {
            print_line(&format!(
                "{:width$}  {:>9}  {}",
                m.source,
                format!("{:.1} MB", m.bytes as f64 / 1e6),
                m.kind
            ));
        }
        Flow::Continue
    }

    fn cmd_load(&mut self, arg: &str) -> Flow {
        if arg.is_empty() {
            eprintln!(":load FILE");
            return Flow::Continue;
        }
        let path = self.runner.ctx.resolve_path(arg);
        let code = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return Flow::Continue;
            }
        };
        let result = self.load(&path, &code);
        crate::script::progress::clear_all();
        if let Err(e) = result {
            match e {
                Error::Interrupted => interrupted(),
                e => eprintln!("{e}"),
            }
        }
        Flow::Continue
    }

    /// Runs a file's code in the session scope, keeping its functions.
    fn load(&mut self, path: &Path, code: &str) -> crate::Result<()> {
        interrupt::clear();
        let name = path.display().to_string();
        let ast = self.runner.compile(&name, code, &self.scope)?;
        self.functions = self.functions.merge(&ast);
        let result = self.runner.eval(&name, &self.functions, &mut self.scope);
        self.functions.clear_statements();
        let _ = result?;
        self.keep_imports(code, Some(&name))?;
        self.refresh_names();
        Ok(())
    }
}

impl Default for Repl {
    fn default() -> Self {
        Self::new()
    }
}

/// Reports a command stopped by Ctrl-C on a line of its own: the terminal has echoed `^C`
/// after whatever was being printed (streamed text, a progress bar).
fn interrupted() {
    eprintln!("\ninterrupted");
}

fn history_path() -> PathBuf {
    mlxi_home().join("history")
}

/// Names in columns that fit 100 characters.
fn columns(names: &[&str]) -> String {
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0) + 2;
    let per_line = (100 / width).max(1);
    names
        .chunks(per_line)
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|n| format!("{n:width$}")).collect();
            format!("  {}", cells.concat().trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_input_keeps_reading() {
        let engine = rhai::Engine::new();
        let c = |code: &str| completeness(&engine, code);
        assert_eq!(c("fn f(x) {\n"), Completeness::Incomplete);
        assert_eq!(c("let x = [1, 2,\n"), Completeness::Incomplete);
        assert_eq!(c("print(1\n"), Completeness::Incomplete);
        assert_eq!(c("let a = #{x: 1,\n"), Completeness::Incomplete);
        assert_eq!(c("if true {\n  1\n"), Completeness::Incomplete);
        assert_eq!(c("let x = 1;\n"), Completeness::Complete);
        assert_eq!(c("let = 5;\n"), Completeness::Complete);
        assert_eq!(c("let x = (1 + ;\n"), Completeness::Complete);
        assert_eq!(c("x +\n"), Completeness::Incomplete);
    }

    #[test]
    fn enter_runs_finished_input_commands_and_input_ended_by_an_empty_line() {
        let engine = rhai::Engine::new();
        assert!(ready(&engine, "let x = 1;"));
        assert!(ready(&engine, ""));
        assert!(ready(&engine, ":help {"));
        assert!(ready(&engine, "let = 5;"));
        assert!(!ready(&engine, "fn twice(x) {"));
        assert!(!ready(&engine, "fn twice(x) {\n    x * 2"));
        assert!(ready(&engine, "fn twice(x) {\n    x * 2\n}"));
        assert!(ready(&engine, "let y = [1,\n"));
        assert!(ready(&engine, "let y = [1,\n  "));
    }

    #[test]
    fn completes_words_methods_and_hook_names() {
        let names: Vec<String> = [
            "norm",
            "normalize",
            "stats::mean",
            "blocks.0.hook_resid_post",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            complete("let n = nor", 11, &names),
            (8, vec!["norm".into(), "normalize".into()])
        );
        assert_eq!(
            complete("stats::m", 8, &names),
            (0, vec!["stats::mean".into()])
        );
        assert_eq!(
            complete("v.norma", 7, &names),
            (2, vec!["normalize".into()])
        );
        assert_eq!(
            complete("hook(m, \"blocks.0", 17, &names),
            (9, vec!["blocks.0.hook_resid_post".into()])
        );
    }

    #[test]
    fn finds_top_level_imports() {
        assert_eq!(
            imports("import \"util\" as u; let x = 1;\nimport \"a/b\" as ab"),
            vec![("util".into(), "u".into()), ("a/b".into(), "ab".into())]
        );
    }
}
