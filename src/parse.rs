//! The values the CLI shares with the library (durations, signals): `forkpoint_settings`,
//! the one parser both use.

pub use forkpoint_settings::{
    duration_for_env, parse_duration, parse_signal, signal_name, DEFAULT_SIGNAL,
};
