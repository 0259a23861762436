//! Why a checkpoint's write failed. Values are built in the writer child, where only the
//! arena allocator is available (no stdio, no locks): formatting them allocates there and
//! nowhere else.

use core::fmt;

use crate::sys;

/// A failed write of the image, as the report and the log say it.
#[derive(Debug)]
pub enum WriteError {
    /// A system call on a named file failed.
    Os {
        what: &'static str,
        path: Vec<u8>,
        errno: i32,
    },
    /// A compression thread could not write its chunk.
    Chunk { errno: i32 },
    /// The library is not in a state to write (not initialised, no compression context).
    Setup(&'static str),
}

impl WriteError {
    pub fn os(what: &'static str, path: &[u8], errno: i32) -> Self {
        WriteError::Os {
            what,
            path: path.to_vec(),
            errno,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Os { what, path, errno } => write!(
                f,
                "{what} {}: {} (errno {errno})",
                String::from_utf8_lossy(path),
                sys::errno_text(*errno)
            ),
            WriteError::Chunk { errno } => write!(
                f,
                "cannot write the image: errno {errno} ({})",
                sys::errno_text(*errno)
            ),
            WriteError::Setup(why) => f.write_str(why),
        }
    }
}
