//! `import`: the script's folder, then recipe folders, then the embedded standard library.

mod common;
use common::*;

#[test]
fn imports_from_the_embedded_stdlib() {
    let out =
        eval("import \"util\" as util; [util::argmax([0.1, 0.7, 0.2]), util::zscores([1, 2, 3])]");
    assert_eq!(out.ok(), "[1, [-1.0, 0.0, 1.0]]");
}

#[test]
fn imports_from_the_script_folder_first() {
    let dir = scratch();
    write(
        dir.path(),
        "exp/helpers.rhai",
        "fn twice(x) { x * 2 }\nexport const NAME = \"helpers\";",
    );
    // A local util.rhai shadows the standard library's.
    write(dir.path(), "exp/util.rhai", "fn argmax(xs) { \"local\" }");
    write(
        dir.path(),
        "exp/main.rhai",
        "import \"helpers\" as h;\nimport \"util\" as u;\nprint(h::twice(21));\nprint(h::NAME);\nprint(u::argmax([1]));",
    );
    // Run from another folder: the import still looks beside the script.
    assert_eq!(
        run_in(dir.path(), &["exp/main.rhai"]).ok(),
        "42\nhelpers\nlocal"
    );
}

#[test]
fn imports_from_recipe_folders() {
    let dir = scratch();
    let recipes = scratch();
    write(
        recipes.path(),
        "steer/tools.rhai",
        "fn hello() { \"from recipes\" }",
    );
    write(
        dir.path(),
        "main.rhai",
        "import \"steer/tools\" as t; print(t::hello());",
    );
    let home = scratch();
    let out: Run = mlxi(home.path())
        .current_dir(dir.path())
        .env("MLXI_RECIPES", recipes.path())
        .args(["run", "main.rhai"])
        .output()
        .expect("runs")
        .into();
    assert_eq!(out.ok(), "from recipes");
    // $MLXI_HOME/recipes is searched too.
    write(
        home.path(),
        "recipes/mine.rhai",
        "fn who() { \"home recipes\" }",
    );
    write(
        dir.path(),
        "home.rhai",
        "import \"mine\" as m; print(m::who());",
    );
    let out: Run = mlxi(home.path())
        .current_dir(dir.path())
        .args(["run", "home.rhai"])
        .output()
        .expect("runs")
        .into();
    assert_eq!(out.ok(), "home recipes");
}

#[test]
fn a_missing_module_says_where_it_looked() {
    let dir = scratch();
    write(dir.path(), "main.rhai", "\nimport \"nowhere\" as n;");
    let err = run_in(dir.path(), &["main.rhai"]).failed().to_string();
    assert!(
        err.starts_with("main.rhai:2:8: module \"nowhere\" not found (looked for nowhere.rhai in "),
        "{err}"
    );
    let listed = err
        .split("the standard library has: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default();
    assert!(listed.split(", ").any(|m| m == "util"), "{err}");
}

#[test]
fn errors_inside_a_module_point_into_the_module() {
    let dir = scratch();
    write(dir.path(), "lib.rhai", "fn bad(t) {\n    t + zeros([7])\n}");
    write(dir.path(), "broken.rhai", "let x = ;");
    write(
        dir.path(),
        "main.rhai",
        "import \"lib\" as lib;\nlib::bad(zeros([2]));",
    );
    let err = run_in(dir.path(), &["main.rhai"]).failed().to_string();
    assert!(
        err.starts_with("lib.rhai:2:7: shape mismatch: [2] + [7]"),
        "{err}"
    );
    assert!(
        err.contains("   2 |     t + zeros([7])\n     |       ^"),
        "{err}"
    );
    assert!(err.ends_with("in bad(), called at main.rhai:2:6"), "{err}");

    write(dir.path(), "main2.rhai", "import \"broken\" as b;");
    let err = run_in(dir.path(), &["main2.rhai"]).failed().to_string();
    assert!(err.starts_with("broken.rhai:1:9: "), "{err}");
    assert!(
        err.ends_with("in module broken.rhai, imported at main2.rhai:1:8"),
        "{err}"
    );
}

#[test]
fn stdlib_helpers_work_on_tensors_and_stats() {
    let out = eval(
        "import \"util\" as util;
         let d = util::describe([0.61, 0.58, 0.66, 0.63]);
         [d.n, util::projections(tensor([[3, 4], [1, 0]]), tensor([0, 2])), util::cosine_matrix([tensor([1, 0]), tensor([0, 1])])]",
    );
    assert_eq!(out.ok(), "[4, [4.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]]");
}

#[test]
fn scripts_cannot_reach_files_except_through_the_listed_functions() {
    // Rhai's own file functions are not part of the engine.
    let err = eval("eval(\"1\"); open_file(\"/etc/passwd\")")
        .failed()
        .to_string();
    assert!(err.contains("Function not found: open_file"), "{err}");
    let err = eval("import \"/etc/passwd\" as p;").failed().to_string();
    assert!(
        err.contains("give a name relative to the script's folder"),
        "{err}"
    );
}
