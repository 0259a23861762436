//! `forkpoint`: run a program with the checkpoint library preloaded, ask it for a
//! checkpoint, restart it from an image, and show what an image holds.

mod checkpoint;
mod compact;
mod control;
mod images;
mod info;
mod parse;
mod run;
mod tree;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Forked checkpoint/restart for unmodified Linux x86-64 programs.
#[derive(Parser, Debug)]
#[command(name = "forkpoint", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a program with libforkpoint.so preloaded (the program gets this command's PID).
    Run {
        /// Directory for the images (default: the working directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Also checkpoint periodically, e.g. 30s, 500ms, 2m.
        #[arg(long, value_name = "T", value_parser = parse::parse_duration)]
        interval: Option<Duration>,
        /// Signal that triggers a checkpoint (name or number; default SIGRTMAX-2).
        #[arg(long, value_name = "SIG", value_parser = parse::parse_signal)]
        signal: Option<i32>,
        /// On SIGTERM: `checkpoint` (then SIGTERM goes on to the program) or
        /// `checkpoint-exit` (then the program ends as by SIGTERM).
        #[arg(long, value_name = "ACTION", value_parser = forkpoint_settings::parse_on_term)]
        on_term: Option<forkpoint_settings::OnTerm>,
        /// Stable image name: every checkpoint writes DIR/NAME.fpk (replacing the last).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Restart the newest image in DIR that verifies, if there is one (trying older ones
        /// when newer ones are broken); otherwise run CMD, with its images in DIR.
        #[arg(long, value_name = "DIR")]
        resume_from: Option<PathBuf>,
        /// Every checkpoint after the first holds only the pages written since the one
        /// before, and names it as its parent (FORKPOINT_INCREMENTAL=1).
        #[arg(long)]
        incremental: bool,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Checkpoint a running process; prints the image path once it is durable.
    Checkpoint {
        /// Image file to write (default: a name with program, pid and sequence number in the
        /// process's image directory).
        #[arg(long, short, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, value_name = "T", default_value = "120s", value_parser = parse::parse_duration)]
        timeout: Duration,
        /// Kill the process (SIGKILL) once the image is durable.
        #[arg(long)]
        kill: bool,
        /// Checkpoint the process and all its descendants together, into one image (each
        /// must run the library). The default when the process has children.
        #[arg(long, conflicts_with = "no_tree")]
        tree: bool,
        /// Checkpoint the process alone, even if it has children (they are not in the
        /// image: a restart brings back the parent without them).
        #[arg(long)]
        no_tree: bool,
        /// Write only the pages written since the process's last checkpoint (the image names
        /// that one as its parent). The first such request of a process writes a whole image
        /// and starts the tracking; where tracking is not possible the image is whole and
        /// the report says why.
        #[arg(long)]
        incremental: bool,
        /// The process to checkpoint.
        #[arg(value_name = "PID", allow_negative_numbers = true)]
        pid: i32,
    },
    /// Restart a program from an image; this command's PID becomes the program's.
    Restart {
        /// Print each step of the restore and its timing to stderr.
        #[arg(short, long)]
        verbose: bool,
        /// Restore an image another user owns (it runs that image's code as you).
        #[arg(long)]
        allow_foreign_owner: bool,
        /// Refuse an image holding anything that cannot be restored faithfully (a
        /// descriptor restored as /dev/null or approximated, a mapping of a vanished file).
        #[arg(long)]
        strict: bool,
        /// Run the program before its memory is filled: a helper fills pages on demand and
        /// in the background (the default with FORKPOINT_RESTART=lazy; needs CAP_SYS_PTRACE,
        /// otherwise the restore is eager). See docs/cli.md.
        #[arg(long, conflicts_with = "eager")]
        lazy: bool,
        /// Fill all memory before the program runs, whatever FORKPOINT_RESTART says.
        #[arg(long)]
        eager: bool,
        /// Where to look for the parents of an incremental image, besides its own directory.
        #[arg(long, value_name = "DIR")]
        images_dir: Option<PathBuf>,
        /// The image file.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
    /// Merge an incremental image and its parents into one whole image.
    Compact {
        /// The whole image to write.
        #[arg(long, short, value_name = "PATH")]
        output: PathBuf,
        /// Where to look for the parents, besides the image's own directory.
        #[arg(long, value_name = "DIR")]
        images_dir: Option<PathBuf>,
        /// The newest image of the chain.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
    /// List the images in a directory, newest first.
    Ls {
        /// Also read every chunk of every image and check it.
        #[arg(long)]
        verify: bool,
        /// One JSON array (see docs/cli.md).
        #[arg(long)]
        json: bool,
        /// The directory (default: the working directory).
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Remove all but the newest N images of a directory, never the newest one that verifies.
    Rm {
        /// How many of the newest images to keep.
        #[arg(long, value_name = "N")]
        keep: usize,
        /// The directory (default: the working directory).
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Show what an image holds.
    Info {
        /// One JSON object (stable, see docs/cli.md).
        #[arg(long)]
        json: bool,
        /// Read and decompress every chunk and check every checksum.
        #[arg(long)]
        verify: bool,
        /// The image file.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
}

/// An error for the user: the message, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(message: String) -> Self {
        CliError { message, code: 1 }
    }
    pub fn usage(message: String) -> Self {
        CliError { message, code: 2 }
    }
}

/// `1.5 MiB`, `812 KiB`, `17 B`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Run {
            dir,
            interval,
            signal,
            on_term,
            name,
            resume_from,
            incremental,
            command,
        } => (
            "run",
            run::run(&run::RunArgs {
                dir,
                interval,
                signal,
                on_term,
                name,
                resume_from,
                incremental,
                command,
            })
            .map(|_| ()),
        ),
        Command::Ls { verify, json, dir } => {
            // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            ("ls", images::ls(&dir, verify, json))
        }
        Command::Rm { keep, dir } => ("rm", images::rm(&dir, keep)),
        Command::Checkpoint {
            output,
            timeout,
            kill,
            tree,
            no_tree,
            incremental,
            pid,
        } => (
            "checkpoint",
            checkpoint::checkpoint(&checkpoint::CheckpointArgs {
                pid,
                output,
                timeout,
                kill,
                incremental,
                tree: tree || (!no_tree && tree::has_children(pid)),
            })
            .map(|path| println!("{path}")),
        ),
        Command::Restart {
            verbose,
            allow_foreign_owner,
            strict,
            lazy,
            eager,
            images_dir,
            image,
        } => {
            let opts = forkpoint_restart_loader::RestoreOptions {
                verbose,
                allow_foreign_owner,
                strict,
                lazy: lazy || (!eager && lazy_by_default()),
                images_dir,
            };
            let err = match forkpoint_restart_loader::restore(&image, &opts) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            ("restart", Err(CliError::new(err.to_string())))
        }
        Command::Compact {
            output,
            images_dir,
            image,
        } => (
            "compact",
            compact::compact(&image, images_dir.as_deref(), &output),
        ),
        Command::Info {
            json,
            verify,
            image,
        } => {
            // `forkpoint info IMG | head`: end quietly at a closed pipe, as other tools do
            // (Rust ignores SIGPIPE, and print! would panic on EPIPE).
            // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            ("info", info::info(&image, json, verify))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forkpoint {name}: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// `FORKPOINT_RESTART=lazy` makes lazy restarts the default (`eager`, unset: eager).
pub fn lazy_by_default() -> bool {
    std::env::var("FORKPOINT_RESTART").is_ok_and(|v| v.trim() == "lazy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_rest_verbatim() {
        let cli = Cli::try_parse_from(["forkpoint", "run", "--", "ls", "-l", "--color"]).unwrap();
        match cli.command {
            Command::Run { command, .. } => assert_eq!(command, ["ls", "-l", "--color"]),
            _ => panic!(),
        }
        let cli =
            Cli::try_parse_from(["forkpoint", "run", "--interval", "2m", "prog", "-x"]).unwrap();
        match cli.command {
            Command::Run {
                command, interval, ..
            } => {
                assert_eq!(command, ["prog", "-x"]);
                assert_eq!(interval, Some(Duration::from_secs(120)));
            }
            _ => panic!(),
        }
        assert!(Cli::try_parse_from(["forkpoint", "run", "--signal", "KILL", "x"]).is_err());
    }

    #[test]
    fn bytes() {
        assert_eq!(fmt_bytes(17), "17 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
    }
}
