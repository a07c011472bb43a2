//! MLX smoke tests: the kernels a transformer needs, through mlx-rs, against hand-written
//! references in plain Rust. A broken link, ABI mismatch or wrong wheel fails here first.

use mlx_rs::{fast, ops, Array, Dtype};

/// Deterministic pseudo-random values in [-1, 1) (a tiny LCG, so the test needs no RNG crate).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn to_vec(a: &Array) -> Vec<f32> {
    a.as_dtype(Dtype::Float32)
        .unwrap()
        .as_slice::<f32>()
        .to_vec()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs difference {worst} > {tol}");
}

/// Row-major [m, k] x [k, n].
fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

#[test]
fn matmul_matches_hand_computed() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = Array::from_slice(&[7.0f32, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[2, 2]);
    assert_eq!(to_vec(&c), vec![58.0, 64.0, 139.0, 154.0]);

    // A size large enough to go through BLAS (OpenBLAS on Linux).
    let (m, k, n) = (64, 96, 48);
    let (av, bv) = (values(m * k, 1), values(k * n, 2));
    let c = Array::from_slice(&av, &[m as i32, k as i32])
        .matmul(Array::from_slice(&bv, &[k as i32, n as i32]))
        .unwrap();
    assert_close(
        &to_vec(&c),
        &matmul_ref(&av, &bv, m, k, n),
        1e-4,
        "matmul 64x96x48",
    );
}

#[test]
fn quantized_matmul_matches_dequantized() {
    let (out_dim, in_dim, group, bits) = (32, 128, 32, 4);
    let w = Array::from_slice(
        &values(out_dim * in_dim, 3),
        &[out_dim as i32, in_dim as i32],
    );
    let (wq, scales, biases) = ops::quantize(&w, group, bits).unwrap();
    assert_eq!(wq.dtype(), Dtype::Uint32);
    assert_eq!(
        wq.shape(),
        &[out_dim as i32, (in_dim * bits as usize / 32) as i32]
    );
    assert_eq!(
        scales.shape(),
        &[out_dim as i32, (in_dim / group as usize) as i32]
    );

    let deq = ops::dequantize(&wq, &scales, &biases, group, bits).unwrap();
    // Affine quantization reconstructs each weight to within one quantization step (MLX snaps
    // the bias so that zero is exactly representable, so the error can exceed half a step).
    let max_scale = to_vec(&scales).iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert_close(
        &to_vec(&deq),
        &to_vec(&w),
        max_scale + 1e-6,
        "dequantize(quantize(w))",
    );

    let x = Array::from_slice(&values(3 * in_dim, 4), &[3, in_dim as i32]);
    let got = ops::quantized_matmul(&x, &wq, &scales, &biases, true, group, bits).unwrap();
    assert_eq!(got.shape(), &[3, out_dim as i32]);
    // Reference: x @ deq^T in plain Rust.
    let deq_t: Vec<f32> = {
        let d = to_vec(&deq);
        let mut t = vec![0.0; d.len()];
        for o in 0..out_dim {
            for i in 0..in_dim {
                t[i * out_dim + o] = d[o * in_dim + i];
            }
        }
        t
    };
    let want = matmul_ref(&to_vec(&x), &deq_t, 3, in_dim, out_dim);
    assert_close(&to_vec(&got), &want, 1e-4, "quantized_matmul");
}

#[test]
fn rms_norm_matches_formula() {
    let (rows, d, eps) = (3, 16, 1e-5f32);
    let xv = values(rows * d, 5);
    let wv = values(d, 6);
    let y = fast::rms_norm(
        Array::from_slice(&xv, &[rows as i32, d as i32]),
        Some(&Array::from_slice(&wv, &[d as i32])),
        eps,
    )
    .unwrap();
    let mut want = Vec::new();
    for r in 0..rows {
        let row = &xv[r * d..(r + 1) * d];
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        want.extend(row.iter().zip(&wv).map(|(v, w)| v * inv * w));
    }
    assert_close(&to_vec(&y), &want, 1e-5, "rms_norm");
}

#[test]
fn rope_matches_rotate_half_reference() {
    // x: [batch=1, heads=2, pos=5, dims=8], non-traditional (rotate-half) RoPE with an offset.
    let (heads, pos, dims, base, offset) = (2usize, 5usize, 8usize, 10000.0f32, 3);
    let xv = values(heads * pos * dims, 7);
    let y = fast::rope(
        Array::from_slice(&xv, &[1, heads as i32, pos as i32, dims as i32]),
        dims as i32,
        false,
        base,
        1.0,
        offset,
        None,
    )
    .unwrap();
    let half = dims / 2;
    let mut want = vec![0.0f32; xv.len()];
    for h in 0..heads {
        for p in 0..pos {
            let at = (h * pos + p) * dims;
            let x = &xv[at..at + dims];
            for i in 0..half {
                let theta = (p + offset as usize) as f32 * base.powf(-2.0 * i as f32 / dims as f32);
                let (s, c) = theta.sin_cos();
                want[at + i] = x[i] * c - x[i + half] * s;
                want[at + i + half] = x[i + half] * c + x[i] * s;
            }
        }
    }
    assert_close(&to_vec(&y), &want, 1e-5, "rope");
}

#[test]
fn causal_attention_matches_softmax_reference() {
    // GQA: 4 query heads sharing 2 KV heads, causal mask.
    let (hq, hkv, t, d) = (4usize, 2usize, 6usize, 8usize);
    let (qv, kv, vv) = (
        values(hq * t * d, 8),
        values(hkv * t * d, 9),
        values(hkv * t * d, 10),
    );
    let shape = |h: usize| [1, h as i32, t as i32, d as i32];
    let scale = 1.0 / (d as f32).sqrt();
    let out = fast::scaled_dot_product_attention(
        Array::from_slice(&qv, &shape(hq)),
        Array::from_slice(&kv, &shape(hkv)),
        Array::from_slice(&vv, &shape(hkv)),
        scale,
        fast::ScaledDotProductAttentionMask::Causal,
        None,
    )
    .unwrap();
    let mut want = vec![0.0f32; hq * t * d];
    for h in 0..hq {
        let g = h / (hq / hkv);
        for i in 0..t {
            let q = &qv[(h * t + i) * d..(h * t + i + 1) * d];
            let scores: Vec<f32> = (0..=i)
                .map(|j| {
                    let k = &kv[(g * t + j) * d..(g * t + j + 1) * d];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f32 = exps.iter().sum();
            for (j, e) in exps.iter().enumerate() {
                let v = &vv[(g * t + j) * d..(g * t + j + 1) * d];
                for c in 0..d {
                    want[(h * t + i) * d + c] += e / z * v[c];
                }
            }
        }
    }
    assert_close(&to_vec(&out), &want, 1e-5, "causal sdpa");
}

#[test]
fn half_precision_round_trips() {
    let v = [0.5f32, -1.25, 3.0, 1024.0];
    for dtype in [Dtype::Float16, Dtype::Bfloat16] {
        let a = Array::from_slice(&v, &[4]).as_dtype(dtype).unwrap();
        assert_eq!(a.dtype(), dtype);
        assert_eq!(to_vec(&a), v.to_vec(), "{dtype:?} round trip");
    }
    let h = Array::from_slice(&[1.5f32], &[1])
        .as_dtype(Dtype::Float16)
        .unwrap();
    assert_eq!(h.as_slice::<half::f16>()[0].to_f32(), 1.5);
}
