//! mlxi: a research shell for looking inside language models, on Apple's MLX.
//!
//! The library holds the engine (model loading, architectures, tokenization, forward passes,
//! generation, hooks) and the Rhai bindings; `main.rs` is the command line.

pub mod analysis;
pub mod arrays;
pub mod bench;
pub mod capture;
pub mod directions;
pub mod distributed;
pub mod error;
pub mod fsaccess;
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod grad;
pub mod hooks;
pub mod hostfile;
pub mod interrupt;
pub mod interventions;
pub mod launch;
pub mod model;
pub mod patching;
pub mod plot;
pub mod probes;
pub mod repl;
pub mod sae;
pub mod script;
pub mod tokenizer;

pub use error::{Error, Result};

/// The BLAS behind MLX's CPU matmuls in this build: "mkl" or "openblas" (Linux with the CPU
/// wheel, chosen by build.rs), "accelerate" (macOS), else "bundled" (the wheel's own).
pub const BLAS: &str = if cfg!(mlxi_blas = "mkl") {
    "mkl"
} else if cfg!(mlxi_blas = "openblas") {
    "openblas"
} else if cfg!(target_os = "macos") {
    "accelerate"
} else {
    "bundled"
};
