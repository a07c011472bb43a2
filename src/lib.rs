//! mlxi: a research shell for looking inside language models, on Apple's MLX.
//!
//! The library holds the engine (model loading, architectures, tokenization, forward passes,
//! generation, hooks) and the Rhai bindings; `main.rs` is the command line.

pub mod error;
pub mod interrupt;
pub mod repl;
pub mod script;

pub use error::{Error, Result};
