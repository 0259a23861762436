//! Configuration from `FORKPOINT_*` environment variables, read once at init (a normal
//! context). The parsing is `forkpoint_settings`, shared with the CLI.

pub use forkpoint_settings::{Config, LogLevel, OnTerm};
