//! Steering that cannot leak, on the default model: `with_steering(m, dirs, opts, f)` removes
//! exactly the steering it attached whether `f` returns or throws (the caller's hooks and
//! steering stay, in order, and the logits are the same bits as before), and
//! `generate(m, prompt, #{steer: ...})` equals `steer`, `generate`, `unsteer`; misspelled keys
//! are errors naming the nearest valid one.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::full_f32;

use std::sync::Mutex;

use mlxi::script::{Context, Runner};
use rhai::{Dynamic, Map};

static MLX: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MLX.lock().unwrap_or_else(|e| e.into_inner())
}

/// Evaluates a script with the default model in f32 as `m` and a sentiment direction at layer
/// 15 as `d`.
fn eval(code: &str) -> Result<Dynamic, String> {
    let runner = Runner::new(Context::in_current_dir());
    full_f32();
    let code = format!(
        r#"let m = load("default", #{{dtype: "f32", dequantize: true}});
        let d = direction(m, ["I feel so happy today!", "What a joyful day"],
                             ["I feel so sad today.", "What a miserable day"], #{{layer: 15}});
        {code}"#
    );
    runner.eval_code("<test>", &code).map_err(|e| e.to_string())
}

#[track_caller]
fn ok(code: &str) -> Map {
    eval(code)
        .unwrap_or_else(|e| panic!("script failed: {e}"))
        .try_cast::<Map>()
        .expect("a map")
}

#[track_caller]
fn err(code: &str) -> String {
    match eval(code) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

fn b(m: &Map, k: &str) -> bool {
    m[k].as_bool().unwrap_or_else(|_| panic!("{k}: {:?}", m[k]))
}

fn i(m: &Map, k: &str) -> i64 {
    m[k].as_int().unwrap_or_else(|_| panic!("{k}: {:?}", m[k]))
}

#[test]
fn an_error_inside_with_steering_leaves_the_model_as_it_was() {
    let _mlx = lock();
    let v = ok(r#"
        hook(m, "blocks.3.hook_resid_post", |x| x * 1.01);
        steer(m, d, #{alpha: 2.0, layers: 10});
        let hooks_before = hooks(m);
        let logits_before = forward(m, "Today I feel");
        let inside = 0;
        let message = "";
        try {
            with_steering(m, [d, #{direction: d, alpha: 8.0, layers: 20}], #{alpha: 4.0}, || {
                inside = hooks(m).len();
                throw "stop here";
            });
        } catch (e) {
            message = e;
        }
        let hooks_after = hooks(m);
        let logits_after = forward(m, "Today I feel");
        #{
            inside: inside,
            message: message,
            same_hooks: hooks_before == hooks_after,
            n_hooks: hooks_after.len(),
            same_logits: to_array(logits_before) == to_array(logits_after),
        }
    "#);
    assert_eq!(
        i(&v, "inside"),
        4,
        "the two directions were attached inside"
    );
    assert_eq!(v["message"].to_string(), "stop here");
    assert!(b(&v, "same_hooks"));
    assert_eq!(i(&v, "n_hooks"), 2);
    assert!(b(&v, "same_logits"));
}

#[test]
fn with_steering_keeps_the_callers_steering_and_returns_the_closures_value() {
    let _mlx = lock();
    let v = ok(r#"
        let p = "Today I feel";
        let gen = #{max_tokens: 8};
        steer(m, d, #{alpha: 4.0 * d.norm, window: "generated"});
        let outer = generate(m, p, gen);
        let inner = with_steering(m, d, #{alpha: -8.0 * d.norm, window: "generated"}, || {
            #{text: generate(m, p, gen), n: hooks(m).len()}
        });
        let after = generate(m, p, gen);
        let listed = hooks(m);
        unsteer(m);
        let plain = generate(m, p, gen);
        let none = with_steering(m, [], || generate(m, p, gen));
        #{
            inner_differs: inner.text != outer,
            inner_hooks: inner.n,
            outer_survives: after == outer,
            left: listed.len(),
            still_steering: listed[0].steering,
            steered_differs: outer != plain,
            empty_is_plain: none == plain,
        }
    "#);
    assert!(b(&v, "inner_differs") && b(&v, "steered_differs"));
    assert_eq!(i(&v, "inner_hooks"), 2);
    assert!(b(&v, "outer_survives"), "the caller's steering survives");
    assert_eq!(i(&v, "left"), 1);
    assert!(b(&v, "still_steering") && b(&v, "empty_is_plain"));
}

#[test]
fn generate_with_steer_equals_steer_generate_unsteer() {
    let _mlx = lock();
    let v = ok(r#"
        let ps = ["Today I feel", "The weather is"];
        let gen = #{max_tokens: 10};
        let opts = #{alpha: 8.0 * d.norm, window: "generated", layers: [12, 15]};
        steer(m, d, opts);
        let global = generate(m, ps, gen);
        unsteer(m);
        let item = opts;
        item.direction = d;
        let scoped = generate(m, ps, #{max_tokens: 10, steer: [item]});
        let scoped_one = generate(m, ps[0], #{max_tokens: 10, steer: item});
        let plain = generate(m, ps, gen);
        let unit = generate(m, ps, #{max_tokens: 10, steer: ()});
        let default_alpha = generate(m, ps[0], #{max_tokens: 10, steer: d});
        steer(m, d);
        let default_global = generate(m, ps[0], gen);
        unsteer(m);
        #{
            same: scoped == global,
            same_one: scoped_one == global[0],
            differs: scoped != plain,
            unit_is_plain: unit == plain,
            defaults_agree: default_alpha == default_global,
            left: hooks(m).len(),
        }
    "#);
    assert!(b(&v, "same") && b(&v, "same_one") && b(&v, "differs"));
    assert!(b(&v, "unit_is_plain") && b(&v, "defaults_agree"));
    assert_eq!(i(&v, "left"), 0);
}

#[test]
fn misspelled_keys_and_bad_values_are_errors_that_leave_nothing_attached() {
    let _mlx = lock();
    let e = err(r#"generate(m, "Hi", #{stear: d})"#);
    assert!(
        e.contains("generate: unknown option 'stear' (did you mean 'steer'?)"),
        "{e}"
    );
    let e = err(r#"generate(m, "Hi", #{steer: #{direction: d, alpah: 2.0}})"#);
    assert!(
        e.contains("unknown option 'alpah' (did you mean 'alpha'?)"),
        "{e}"
    );
    let e = err(r#"with_steering(m, d, #{alpah: 2.0}, || 1)"#);
    assert!(
        e.contains("unknown option 'alpah' (did you mean 'alpha'?)"),
        "{e}"
    );
    let e = err(r#"with_steering(m, [#{alpha: 2.0}], || 1)"#);
    assert!(e.contains("needs 'direction'"), "{e}");
    let e = err(r#"with_steering(m, 3, || 1)"#);
    assert!(e.contains("steer with a Direction"), "{e}");
    // The second direction's layer is out of range: the first one is not left attached.
    let v = ok(r#"
        let n = 0;
        try {
            with_steering(m, [d, #{direction: d, layers: 99}], || 1);
        } catch {
            n = hooks(m).len();
        }
        #{n: n}
    "#);
    assert_eq!(i(&v, "n"), 0);
}
