//! A recipe from someone else must be as harmless to run as a web page: every trick a hostile
//! `.rhai` author could try is refused with a message naming the flag that would allow it, and
//! the victim file is left as it was. What a script may do (its folder, its output folder, the
//! `--allow-*` flags, the REPL's current folder) keeps working.
//!
//! Every test runs mlxi with a fake HOME in a temporary folder, never the real home.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// A fake home with the files a hostile recipe would go for, a folder holding the recipe, and
/// a folder outside both.
struct Victim {
    home: tempfile::TempDir,
    mlxi_home: tempfile::TempDir,
    dir: tempfile::TempDir,
    outside: tempfile::TempDir,
}

const BASHRC: &str = "# my shell setup\nexport PATH=$HOME/bin:$PATH\n";
const KEYS: &str = "ssh-ed25519 AAAAC3Nz my-only-key\n";
const SECRET: &str = "SECRET-TOKEN-7f3a9c";

impl Victim {
    fn new() -> Self {
        let v = Victim {
            home: scratch(),
            mlxi_home: scratch(),
            dir: scratch(),
            outside: scratch(),
        };
        write(v.home.path(), ".bashrc", BASHRC);
        write(v.home.path(), ".ssh/authorized_keys", KEYS);
        write(
            v.home.path(),
            "notes.json",
            &format!("{{\"token\": \"{SECRET}\"}}"),
        );
        v
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn outside(&self) -> &Path {
        self.outside.path()
    }

    /// mlxi with the fake HOME, its own MLXI_HOME and an empty Hugging Face cache, offline.
    fn mlxi(&self) -> Command {
        let mut c = mlxi(self.mlxi_home.path());
        c.env("HOME", self.home())
            .env("HF_HUB_CACHE", self.mlxi_home.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .current_dir(self.dir());
        c
    }

    /// Writes `code` as `recipe.rhai` in the recipe folder and runs it with `flags`.
    fn run(&self, code: &str, flags: &[&str]) -> Run {
        write(self.dir(), "recipe.rhai", code);
        self.mlxi()
            .arg("run")
            .arg("recipe.rhai")
            .args(flags)
            .output()
            .expect("mlxi runs")
            .into()
    }

    /// The recipe fails with a message containing every one of `wanted`.
    #[track_caller]
    fn refused(&self, code: &str, wanted: &[&str]) -> String {
        let run = self.run(code, &[]);
        let err = run.failed().to_string();
        assert!(err.starts_with("recipe.rhai:"), "{err}");
        for w in wanted {
            assert!(err.contains(w), "expected {w:?} in:\n{err}");
        }
        err
    }

    /// The victim files hold what they held.
    #[track_caller]
    fn unharmed(&self) {
        let read = |p: &str| std::fs::read_to_string(self.home().join(p)).expect("victim file");
        assert_eq!(read(".bashrc"), BASHRC);
        assert_eq!(read(".ssh/authorized_keys"), KEYS);
    }
}

fn real(p: &Path) -> String {
    p.canonicalize().expect("exists").display().to_string()
}

#[test]
fn a_recipe_cannot_write_a_shell_line_into_bashrc() {
    let v = Victim::new();
    let err = v.refused(
        r#"save_json("$(echo PWNED > x)", "~/.bashrc");"#,
        &["save_json: may not write", ".bashrc", "--allow-write"],
    );
    assert!(err.contains(&real(&v.home().join(".bashrc"))), "{err}");
    v.unharmed();
    assert!(!v.dir().join("x").exists());
}

#[test]
fn results_cannot_truncate_a_file_anywhere() {
    let v = Victim::new();
    v.refused(
        r#"results("~/.ssh/authorized_keys");"#,
        &["results: may not write", "authorized_keys", "--allow-write"],
    );
    let abs = v.home().join(".ssh/authorized_keys");
    v.refused(
        &format!(r#"results("{}");"#, abs.display()),
        &["results: may not write"],
    );
    v.refused(
        &format!(r#"results("{}", #{{resume: true}});"#, abs.display()),
        &["results: may not write"],
    );
    v.unharmed();
}

#[test]
fn absolute_parent_and_home_paths_are_refused_for_every_writer() {
    let v = Victim::new();
    let target = v.outside().join("victim.json");
    std::fs::write(&target, "{\"keep\": 1}").expect("victim");
    let abs = target.display().to_string();
    let up = format!(
        "../{}/victim.json",
        v.outside().file_name().expect("name").to_string_lossy()
    );
    for path in [abs.as_str(), up.as_str(), "~/.bashrc", "~/new.json"] {
        for (code, verb) in [
            (format!(r#"save_json(1, "{path}")"#), "save_json"),
            (format!(r#"results("{path}")"#), "results"),
            (format!(r#"save(tensor([1, 2]), "{path}")"#), "save"),
            (
                format!(r#"plot::line([1, 2], #{{path: "{path}.svg"}})"#),
                "plot::line",
            ),
            (format!(r#"save_library(#{{}}, "{path}")"#), "save_library"),
        ] {
            v.refused(&code, &[&format!("{verb}: may not write"), "--allow-write"]);
        }
    }
    assert_eq!(
        std::fs::read_to_string(&target).expect("victim"),
        "{\"keep\": 1}"
    );
    assert_eq!(std::fs::read_dir(v.outside()).expect("folder").count(), 1);
    assert!(!v.home().join("new.json").exists());
    v.unharmed();
}

#[test]
fn reading_outside_the_folders_is_refused_and_resume_reads_nothing() {
    let v = Victim::new();
    for code in [
        r#"load_tensor("~/notes.json")"#,
        r#"load_direction("~/notes.json")"#,
        r#"load_library("~/notes.json")"#,
        r#"load_cache("~/notes.json")"#,
    ] {
        let err = v.refused(code, &["may not read", "--allow-read"]);
        assert!(!err.contains(SECRET), "{err}");
    }
    // Resuming is reading: a results file outside the folders cannot be read this way either.
    let err = v.refused(
        r#"let r = results("~/notes.json", #{resume: true}); print(r.get("token"));"#,
        &["results: may not write"],
    );
    assert!(!err.contains(SECRET), "{err}");
}

#[test]
fn error_messages_never_quote_a_file() {
    let v = Victim::new();
    // A file the script may read (it lies in its folder) that is neither JSON nor safetensors,
    // and one whose safetensors header quotes the secret where a tensor should be.
    write(v.dir(), "out/r.json", &format!("{SECRET} is not JSON"));
    let header = format!("{{\"{SECRET}\": \"{SECRET}\"}}");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(v.dir().join("secret.safetensors"), &bytes).expect("write");
    for (code, wanted) in [
        (
            r#"results("out/r.json", #{resume: true})"#,
            "is not valid JSON (line 1, column 1)",
        ),
        (
            r#"load_tensor("secret.safetensors")"#,
            "not a safetensors file",
        ),
        (
            r#"load_direction("secret.safetensors")"#,
            "not a safetensors file",
        ),
        (
            r#"load_cache("secret.safetensors")"#,
            "not a safetensors file",
        ),
    ] {
        let err = v.refused(code, &[wanted]);
        assert!(!err.contains(SECRET), "the error quotes the file:\n{err}");
    }
}

#[test]
fn existing_files_outside_the_output_folder_are_not_replaced() {
    let v = Victim::new();
    write(v.dir(), "data.json", "[1, 2, 3]");
    write(v.dir(), "helper.rhai", "fn f() { 1 }");
    v.refused(
        r#"save_json(0, "data.json")"#,
        &["may not replace", "data.json", "--allow-write"],
    );
    v.refused(r#"results("data.json")"#, &["may not replace"]);
    // A new .rhai file could become a module another script imports.
    v.refused(r#"save_json(0, "util.rhai")"#, &[".rhai files"]);
    v.refused(r#"save_json(0, "helper.rhai")"#, &[".rhai files"]);
    v.refused(r#"save_json(0, "recipe.rhai")"#, &[".rhai files"]);
    assert_eq!(
        std::fs::read_to_string(v.dir().join("data.json")).expect("kept"),
        "[1, 2, 3]"
    );
    assert!(!v.dir().join("util.rhai").exists());
    // With the flag, it is replaced.
    let flag = v.dir().join("data.json").display().to_string();
    v.run(r#"save_json(0, "data.json")"#, &["--allow-write", &flag])
        .ok();
    assert_eq!(
        std::fs::read_to_string(v.dir().join("data.json")).expect("kept"),
        "0\n"
    );
}

#[test]
fn a_symlinked_output_folder_or_file_leading_outside_is_refused() {
    let v = Victim::new();
    std::os::unix::fs::symlink(v.outside(), v.dir().join("out")).expect("link");
    std::os::unix::fs::symlink(v.home().join(".bashrc"), v.dir().join("rc.json")).expect("link");
    let err = v.refused(
        r#"save_json(1, "out/x.json")"#,
        &["may not write", "--allow-write"],
    );
    assert!(err.contains(&real(v.outside())), "{err}");
    v.refused(r#"results("out/r.json")"#, &["may not write"]);
    v.refused(r#"save_json(1, "rc.json")"#, &["may not write", ".bashrc"]);
    v.refused(r#"load_tensor("rc.json")"#, &["may not read", ".bashrc"]);
    // A link that leads nowhere is refused too (a write through it would land where it points).
    std::os::unix::fs::symlink(v.outside().join("nothing"), v.dir().join("dangling"))
        .expect("link");
    v.refused(
        r#"save_json(1, "dangling/x.json")"#,
        &["a symbolic link that leads nowhere"],
    );
    v.unharmed();
    assert!(!v.outside().join("x.json").exists());
}

#[test]
fn imports_come_only_from_the_script_folder_recipes_and_stdlib() {
    let v = Victim::new();
    write(v.outside(), "evil.rhai", "print(\"evil code ran\");");
    let up = format!(
        "../{}/evil",
        v.outside().file_name().expect("name").to_string_lossy()
    );
    let err = v.refused(
        &format!(r#"import "{up}" as e;"#),
        &["cannot contain \"..\""],
    );
    assert!(!err.contains("evil code ran"));
    v.refused(
        &format!(r#"import "{}" as e;"#, v.outside().join("evil").display()),
        &["give a name relative to the script's folder"],
    );
    v.refused(r#"import "../../../../../etc/passwd" as e;"#, &["\"..\""]);
    // A module that is a link to a file outside the folder.
    std::os::unix::fs::symlink(v.outside().join("evil.rhai"), v.dir().join("helper.rhai"))
        .expect("link");
    let run = v.run(r#"import "helper" as h;"#, &[]);
    let err = run.failed();
    assert!(
        err.contains("leads to") && err.contains("modules are read only from"),
        "{err}"
    );
    assert!(!run.stdout.contains("evil code ran"), "{}", run.stdout);
    // A folder of modules that is a link outside.
    std::os::unix::fs::symlink(v.outside(), v.dir().join("lib")).expect("link");
    let run = v.run(r#"import "lib/evil" as h;"#, &[]);
    assert!(run.failed().contains("leads to"), "{}", run.stderr);
    assert!(!run.stdout.contains("evil code ran"));
}

#[test]
fn import_cycles_are_reported() {
    let v = Victim::new();
    write(v.dir(), "a.rhai", "import \"b\" as b;\nfn fa() { 1 }");
    write(v.dir(), "b.rhai", "import \"a\" as a;\nfn fb() { 2 }");
    let run = v.run("import \"a\" as a;\nprint(a::fa());", &[]);
    let err = run.failed();
    assert!(
        err.starts_with("b.rhai:1:8: import cycle: a.rhai imports b.rhai imports a.rhai"),
        "{err}"
    );
    assert!(err.contains("imported at recipe.rhai:1:8"), "{err}");
    // The script itself, imported back by its module.
    write(v.dir(), "c.rhai", "import \"recipe\" as r;\nfn fc() { 3 }");
    let run = v.run("import \"c\" as c;\nprint(c::fc());", &[]);
    let err = run.failed();
    assert!(
        err.contains("import cycle: recipe.rhai imports c.rhai imports recipe.rhai"),
        "{err}"
    );
    // A module imported twice without a cycle is fine.
    write(
        v.dir(),
        "d.rhai",
        "import \"e\" as e;\nfn fd() { e::fe() + 1 }",
    );
    write(v.dir(), "e.rhai", "fn fe() { 4 }");
    let out = v.run(
        "import \"d\" as d;\nimport \"e\" as e;\nprint(d::fd() + e::fe());",
        &[],
    );
    assert_eq!(out.ok(), "9");
}

#[test]
fn a_download_needs_allow_net() {
    let v = Victim::new();
    let err = v.refused(
        r#"load("someone/huge-model")"#,
        &[
            "load(\"someone/huge-model\")",
            "is not in the Hugging Face cache",
            "needs the network",
            "--allow-net",
        ],
    );
    assert!(!err.contains("HF_HUB_OFFLINE"), "{err}");
    // With the flag, the permission passes and the download is tried (offline here).
    let run = v.run(r#"load("someone/huge-model")"#, &["--allow-net"]);
    let err = run.failed();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(!err.contains("--allow-net"), "{err}");
}

const LLAMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/models/llama-sharded"
);

/// A copy of the sharded llama fixture in `dir` with `index` as its weight map's two shards.
fn model_with_index(dir: &Path, shards: [&str; 2]) {
    std::fs::create_dir_all(dir).expect("folder");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(Path::new(LLAMA).join(f), dir.join(f)).expect("copy");
    }
    let text = std::fs::read_to_string(Path::new(LLAMA).join("model.safetensors.index.json"))
        .expect("index");
    let text = text
        .replace("model-00001-of-00002.safetensors", shards[0])
        .replace("model-00002-of-00002.safetensors", shards[1]);
    std::fs::write(dir.join("model.safetensors.index.json"), text).expect("index");
}

#[test]
fn a_model_index_cannot_point_outside_its_folder() {
    let v = Victim::new();
    let model = v.dir().join("model");
    let load = format!(r#"load("{}").n_layers"#, model.display());
    for (bad, wanted) in [
        (
            "../../../../../../etc/passwd",
            "is not a plain relative path",
        ),
        ("/etc/passwd", "is not a plain relative path"),
        ("evil.safetensors", "leads to"),
    ] {
        model_with_index(&model, ["model-00001-of-00002.safetensors", bad]);
        let _ =
            std::os::unix::fs::symlink(v.home().join(".bashrc"), model.join("evil.safetensors"));
        let err = v.refused(
            &load,
            &[wanted, "an index may name only files inside its folder"],
        );
        assert!(!err.contains("PATH=$HOME"), "{err}");
    }
    // The fixture as it is loads.
    model_with_index(
        &model,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    assert_eq!(
        v.run(&format!("print({load});"), &[]).ok(),
        "2",
        "the untouched fixture must load"
    );
}

#[test]
fn a_hugging_face_snapshot_with_shards_linked_into_blobs_loads() {
    // The hub cache keeps files in blobs/ and links them from snapshots/REV/: those links
    // leave the snapshot folder, into the repo's own blobs folder, and are allowed.
    let v = Victim::new();
    let hf = v.mlxi_home.path().join("hf");
    let repo = hf.join("models--test-org--sharded");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(rev);
    model_with_index(
        &snap,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    std::fs::create_dir_all(repo.join("blobs")).expect("blobs");
    write(&repo, "refs/main", rev);
    for (i, f) in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .enumerate()
    {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::rename(snap.join(f), &blob).expect("move");
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snap.join(f)).expect("link");
    }
    let out = v.run(r#"print(load("test-org/sharded").n_layers);"#, &[]);
    assert_eq!(out.ok(), "2");
}

#[test]
fn the_script_folder_and_output_folder_are_allowed() {
    let v = Victim::new();
    let code = r#"
        save_json(#{a: 1}, "out/a.json");
        save_json(#{a: 2}, "out/a.json");          // replaced: it is the output folder
        let r = results("out/r.json");
        r.set("x", 1);
        let again = results("out/r.json", #{resume: true});
        again.push("ys", 2);
        save(tensor([1.0, 2.0]), "out/t.safetensors");
        print(to_array(load_tensor("out/t.safetensors")));
        plot::line([1, 2], #{path: "out/p.svg"});
        save_json(#{fresh: true}, "fresh/new.json"); // a new file beside the script
        print(keys(again));
    "#;
    let out = v.run(code, &[]);
    assert_eq!(out.ok(), "[1.0, 2.0]\n[\"x\", \"ys\"]");
    let read = |p: &str| std::fs::read_to_string(v.dir().join(p)).expect("written");
    assert!(read("out/a.json").contains("\"a\": 2"));
    assert!(read("out/p.svg").starts_with("<svg"));
    assert!(read("fresh/new.json").contains("\"fresh\": true"));
    v.unharmed();
}

#[test]
fn out_and_allow_flags_widen_what_a_script_may_touch() {
    let v = Victim::new();
    let other = v.outside().join("results");
    let other_s = other.display().to_string();
    // --out DIR: the script sees it as args.out and may write (and replace) there.
    let code = r#"save_json(1, `${args.out}/x.json`); save_json(2, `${args.out}/x.json`); print(args.out);"#;
    let out = v.run(code, &["--out", &other_s]);
    assert_eq!(out.ok(), other_s);
    assert_eq!(
        std::fs::read_to_string(other.join("x.json")).expect("written"),
        "2\n"
    );
    // --set out=DIR does the same, as the recipes in scripts/ use it.
    let set = format!("out={}", v.outside().join("set").display());
    v.run(code, &["--set", &set]).ok();
    assert!(v.outside().join("set/x.json").is_file());
    // Both at once is ambiguous.
    let run = v.run(code, &["--out", &other_s, "--set", &set]);
    assert!(
        run.failed().contains("give the output folder once"),
        "{}",
        run.stderr
    );
    // --allow-read PATH.
    let t = v.outside().join("t.safetensors");
    let t_s = t.display().to_string();
    v.run(
        &format!(r#"save(tensor([3.0]), "{t_s}");"#),
        &["--allow-write", &t_s],
    )
    .ok();
    let load = format!(r#"print(to_array(load_tensor("{t_s}")));"#);
    v.run(&load, &[]).failed();
    assert_eq!(v.run(&load, &["--allow-read", &t_s]).ok(), "[3.0]");
    // --allow-write a folder, given with ~.
    let run = v.run(
        r#"save_json(1, "~/.bashrc");"#,
        &["--allow-write", "~/.ssh"],
    );
    assert!(run.failed().contains("may not write"), "{}", run.stderr);
    v.run(
        r#"save_json(1, "~/.ssh/extra.json");"#,
        &[
            "--allow-write",
            &v.home().join(".ssh").display().to_string(),
        ],
    )
    .ok();
    assert!(v.home().join(".ssh/extra.json").is_file());
    v.unharmed();
}

#[test]
fn the_repl_and_e_use_the_current_folder() {
    let v = Victim::new();
    let e = |code: &str, flags: &[&str]| -> Run {
        v.mlxi()
            .args(flags)
            .arg("-e")
            .arg(code)
            .output()
            .expect("runs")
            .into()
    };
    // -e writes in the current folder, and may replace files there.
    write(v.dir(), "here.json", "old");
    e(r#"save_json(5, "here.json")"#, &[]).ok();
    assert_eq!(
        std::fs::read_to_string(v.dir().join("here.json")).expect("written"),
        "5\n"
    );
    let err = e(r#"save_json(5, "~/.bashrc")"#, &[]);
    assert!(err.failed().contains("--allow-write"), "{}", err.stderr);
    v.unharmed();
    let t = v.outside().join("x.json").display().to_string();
    e(&format!(r#"save_json(5, "{t}")"#), &["--allow-write", &t]).ok();
    assert!(v.outside().join("x.json").is_file());
}
