//! Probes against scikit-learn: the same data and folds (tests/fixtures/probe/golden.json,
//! made by tests/reference/probe_golden.py) must give the same fold scores, coefficients,
//! intercepts and predictions as StandardScaler + LogisticRegression / Ridge.

use mlxi::probes::{evaluate, stratified_folds, Settings, Target, Weights};
use ndarray::Array2;
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/probe/golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json")).expect("json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = v.as_array().expect("rows").iter().map(floats).collect();
    let (n, d) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((n, d), rows.concat()).expect("shape")
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: mlxi {g}, scikit-learn {w}"
        );
    }
}

/// Runs one golden case through `evaluate` and compares everything it records.
fn check(name: &str) {
    let g = &golden()[name];
    let x = matrix(&g["x"]);
    let folds: Vec<usize> = floats(&g["folds"]).iter().map(|&f| f as usize).collect();
    let k = folds.iter().max().unwrap() + 1;
    let kind = g["kind"].as_str().unwrap();
    let target = if kind == "ridge" {
        Target::Values(floats(&g["y"]))
    } else {
        let y: Vec<usize> = floats(&g["y"]).iter().map(|&v| v as usize).collect();
        let classes = y.iter().max().unwrap() + 1;
        Target::Classes {
            y,
            names: (0..classes).map(|c| c.to_string()).collect(),
        }
    };
    let settings = Settings {
        folds: k,
        cs: vec![g["c"].as_f64().unwrap()],
        ..Settings::default()
    };
    let r = evaluate(x.view(), &target, &folds, &settings).expect("evaluate");
    close(
        &format!("{name} fold scores"),
        &r.scores,
        &floats(&g["fold_scores"]),
        1e-9,
    );
    let coef: Vec<Vec<f64>> = g["coef_input_units"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    for (class, want) in coef.iter().enumerate() {
        // Binary and ridge: one row (the positive class); multinomial: one per class.
        let c = if coef.len() == 1 && kind == "logistic" {
            1
        } else {
            class
        };
        close(
            &format!("{name} coefficients of class {class}"),
            &r.fitted.input_weights(c),
            want,
            1e-4,
        );
    }
    let mut want_b = floats(&g["intercept"]);
    let mut got_b = match &r.fitted.weights {
        Weights::Binary { b, .. } | Weights::Ridge { b, .. } => vec![*b],
        Weights::Multi { b, .. } => b.to_vec(),
    };
    if kind == "multinomial" {
        // Softmax intercepts are defined up to a shared constant (unpenalised): centre both.
        for v in [&mut want_b, &mut got_b] {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter_mut().for_each(|b| *b -= m);
        }
    }
    close(&format!("{name} intercept"), &got_b, &want_b, 1e-4);
    let pred = r.fitted.predict(x.slice(ndarray::s![..5, ..]));
    let want_pred: Vec<f64> = g["predict_first5"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| match row {
            Value::Array(_) => floats(row),
            v => vec![v.as_f64().unwrap()],
        })
        .collect();
    close(
        &format!("{name} predictions"),
        &pred.iter().copied().collect::<Vec<_>>(),
        &want_pred,
        1e-5,
    );
}

#[test]
fn binary_logistic_matches_scikit_learn() {
    check("binary");
}

#[test]
fn multinomial_logistic_matches_scikit_learn() {
    check("multinomial");
}

#[test]
fn ridge_matches_scikit_learn() {
    check("ridge");
}

#[test]
fn wide_ridge_matches_scikit_learn() {
    check("ridge_wide");
}

#[test]
fn a_c_sweep_prefers_strong_regularisation_on_noise() {
    // Labels carried by feature 0 only, plus 40 noise features: cross-validation should not
    // pick the weakest regularisation, and the chosen c must come from the grid.
    let n = 80;
    let mut s = 7u64;
    let mut r = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((n, 41), |(i, j)| {
        r() + if j == 0 { y[i] as f64 * 0.6 } else { 0.0 }
    });
    let target = Target::Classes {
        y: y.clone(),
        names: vec!["a".into(), "b".into()],
    };
    let grid = vec![1e-3, 1e-2, 1e-1, 1.0, 100.0];
    let settings = Settings {
        cs: grid.clone(),
        ..Settings::default()
    };
    let folds = stratified_folds(&y, 2, 5, 0);
    let res = evaluate(x.view(), &target, &folds, &settings).unwrap();
    assert!(grid.contains(&res.c), "{}", res.c);
    assert!(
        res.c < 100.0,
        "chose the weakest regularisation on noisy data"
    );
    assert!(res.fold_c.iter().all(|c| grid.contains(c)));
    assert!(res.mean > 0.6, "accuracy {}", res.mean);
    // Same seed, same result.
    let again = evaluate(x.view(), &target, &folds, &settings).unwrap();
    assert_eq!(res.scores, again.scores);
    assert_eq!(res.fitted.input_weights(1), again.fitted.input_weights(1));
}
