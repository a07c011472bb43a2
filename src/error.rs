//! The library's one error type. Errors cross into Rhai once, at the binding boundary.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, with messages written for the person at the REPL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An MLX operation failed (shape mismatch, out of memory, ...).
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A model file or folder that cannot be used as it is.
    #[error("{0}")]
    Model(String),
    /// A config value that no model can have, found before anything is allocated; the loader
    /// adds the file it came from ([`Error::in_file`]).
    #[error("{key} = {value}: {why}")]
    Config {
        key: String,
        value: String,
        why: String,
    },
    /// A tokenizer or chat template problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Bad arguments from a script or the command line.
    #[error("{0}")]
    Invalid(String),
    /// A script tried to touch a file or the network it has no permission for (see
    /// `fsaccess`); the message says which flag allows it.
    #[error("{0}")]
    Denied(String),
    /// A script failed: the full report (`FILE:LINE:COL: message`, the line, the call trail).
    #[error("{0}")]
    Script(String),
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::Config`] as a model error naming the file the config came from; other
    /// errors unchanged.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Config { .. } => Error::Model(format!("{}: {self}", path.display())),
            e => e,
        }
    }
}
