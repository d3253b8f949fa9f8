//! Errors: a description that cannot be turned into tables, or tables that cannot be written.

use std::path::PathBuf;

/// Why tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The description is inconsistent; `subject` names the part (e.g. "root bridge 1 (segment 1)
    /// mem64 window"), `problem` says what is wrong and how to fix it.
    #[error("{subject}: {problem}")]
    Invalid {
        /// The part of the description at fault.
        subject: String,
        /// What is wrong with it, and how to fix it.
        problem: String,
    },
    /// A table file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(subject: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Invalid {
            subject: subject.into(),
            problem: problem.into(),
        }
    }
}
