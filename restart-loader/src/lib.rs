//! The restart loader: verify an image and the machine, plan the address space, stage
//! memory and descriptors, then hand over to the restore blob. The process that calls
//! [`restore`] becomes the checkpointed program (same PID), or gets an error having changed
//! nothing.

use std::fmt;
use std::path::Path;

/// Options of `forkpoint restart`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Print each step and its timing to stderr.
    pub verbose: bool,
}

/// Why a restore was refused. Nothing has been changed when this is returned.
#[derive(Debug)]
pub struct RestoreError(pub String);

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

/// Restores the image at `path` into the calling process. Returns only on failure.
pub fn restore(path: &Path, opts: &RestoreOptions) -> Result<std::convert::Infallible, RestoreError> {
    let _ = (path, opts);
    Err(RestoreError("restore is being implemented".into()))
}
