//! The forkpoint image format: one file holding a process's memory, threads and
//! descriptors, written by `libforkpoint.so` and read by the restart loader.
//!
//! Layout (all integers little-endian; `docs/image-format.md` is the byte-by-byte spec):
//!
//! ```text
//! 0      header (64 bytes, padded with zeros to PAGE_SIZE so chunks can be page-aligned)
//! 4096   chunk 0, chunk 1, ...       page contents, each chunk zstd-compressed or stored
//! M      metadata                    UTF-8 JSON of [`Metadata`] (mappings, threads, fds, index)
//! EOF-64 footer (64 bytes)           where the metadata is, its CRC, the file length
//! ```
//!
//! This crate does no I/O of its own but reading a file in [`read`] (or bytes in memory,
//! [`ImageFile::from_bytes`]) and writing test images in [`build`]: the writer in the
//! library calls [`Header::encode`], [`encode_metadata`] and [`Footer::encode`] and writes the
//! bytes with raw syscalls. Everything the reader returns has been validated (see
//! [`validate`]); it never panics on any input (`fuzz/` fuzzes it).
//!
//! [`build`] makes whole images in memory for tests: [`ImageBuilder`], [`write_image`],
//! and [`rewrite_metadata`] / [`rewrite_header`] to damage an existing image on purpose.
#![forbid(unsafe_code)]

pub mod build;
pub mod chain;
pub mod maps;
pub mod pages;
pub mod read;
pub mod types;
pub mod validate;

pub use build::{rewrite_header, rewrite_metadata, write_image, ImageBuilder};
pub use read::{
    decode_metadata, parse_footer, parse_header, FileRange, ImageFile, ReadAt, ReadError,
};
pub use types::*;
pub use validate::{validate_metadata, ValidationError};

/// `b"FPKIMAGE"`: first eight bytes of every image.
pub const HEADER_MAGIC: [u8; 8] = *b"FPKIMAGE";
/// `b"FPKINDEX"`: first eight bytes of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"FPKINDEX";
/// Format major version: a reader refuses any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version: a reader refuses a newer minor (it may hold fields it would ignore).
/// 1.2 added process trees ([`TreeInfo`]); a single process's image is still written as 1.1,
/// so readers that predate trees keep reading it.
/// 1.3 added incremental images ([`ParentImage`], [`FLAG_INCREMENTAL`]); full images keep
/// their older minor.
pub const FORMAT_MINOR: u16 = 3;
/// The minor version of a single process's image.
pub const FORMAT_MINOR_SINGLE: u16 = 1;
/// The minor version of a process tree's image (the first to have [`Metadata::tree`]).
pub const FORMAT_MINOR_TREE: u16 = 2;
/// The minor version of an incremental image (the first with [`Metadata::parent`]).
pub const FORMAT_MINOR_INCREMENTAL: u16 = 3;
pub const HEADER_LEN: usize = 64;
pub const FOOTER_LEN: usize = 64;
pub const PAGE_SIZE: u64 = 4096;
/// Chunks start here: the header is padded to a page.
pub const FIRST_CHUNK_OFFSET: u64 = PAGE_SIZE;
/// The only metadata encoding in version 1.
pub const METADATA_ENCODING_JSON: u32 = 1;
/// Upper bound on the metadata a reader accepts (bounds allocation on hostile input).
pub const MAX_METADATA_LEN: u64 = 512 << 20;
/// Upper bound on one chunk's uncompressed size.
pub const MAX_CHUNK_RAW_LEN: u64 = 64 << 20;
/// Header flag: the image names a parent image ([`Metadata::parent`]) and holds only the
/// pages written since it (format 1.3). A reader that cannot resolve the chain must refuse.
pub const FLAG_INCREMENTAL: u32 = 1;

/// The value the library's fork point returns in a restored process (parent gets a pid,
/// the writer child 0, an error a negative errno). Larger than any pid.
pub const RESUME_RESTORED: u64 = 0x4650_0000_0000_0001;

/// The page a tree checkpoint's members and `forkpoint checkpoint --tree` share
/// (little-endian u32 words): word 0 magic, 1 members, 2 arrived, 3 phase, 4 forked,
/// 5 timeout in ms, from 16 the PIDs of the arrived members in arrival order.
pub mod tree_barrier {
    pub const MAGIC: u32 = 0x5442_5046; // "FPBT"
    pub const PAGE: usize = 4096;
    pub const W_MAGIC: usize = 0;
    pub const W_MEMBERS: usize = 1;
    pub const W_ARRIVED: usize = 2;
    pub const W_PHASE: usize = 3;
    pub const W_FORKED: usize = 4;
    pub const W_TIMEOUT_MS: usize = 5;
    /// Set by the CLI once it has checked, with every member stopped, that the tree is
    /// whole (every process started meanwhile joined): only then may the release come.
    pub const W_VERIFIED: usize = 6;
    /// Set by the CLI for `--kill`: after the release the members stay stopped (their
    /// writers write) until the CLI kills them, or moves the phase to resume because the
    /// image could not be made. So nothing the tree does after the cut (files a build
    /// renames) happens before the restart.
    pub const W_HOLD: usize = 7;
    /// Set by the CLI once it has compared the writers' descriptors (which open file
    /// descriptions members share, `kcmp`): the writers, which hold copies of their
    /// members' descriptors as they were at the cut, exit only then (or at the timeout).
    pub const W_COMPARED: usize = 8;
    /// The members' PIDs, in order of arrival.
    pub const W_PIDS: usize = 16;
    /// Most members the page has room for.
    pub const MAX_MEMBERS: usize = PAGE / 4 - W_PIDS;
    pub const PHASE_GATHER: u32 = 0;
    pub const PHASE_FORK: u32 = 1;
    pub const PHASE_RELEASE: u32 = 2;
    /// After a held release: the members run on.
    pub const PHASE_RESUME: u32 = 4;
    /// Any other phase abandons the checkpoint; the CLI writes this one.
    pub const PHASE_ABORT: u32 = 3;
}

/// Layout of the library's restore-info block, whose address the image records in
/// [`LibraryInfo::restore_info_addr`]. The loader writes it into the staged memory so the
/// library learns, when it resumes, that it was restored and what to clean up.
pub mod restore_info {
    /// `magic` value written by the loader.
    pub const MAGIC: u64 = 0x5245_5354_4f52_4544; // "RESTORED"
    /// `magic` of a lazy restore: pages may still be missing, filled by the loader's helper
    /// through userfaultfd. A checkpoint waits until none is (the writer would miss them).
    /// An older library does not know it and takes the block as not written: it then keeps
    /// the blob region mapped, nothing worse.
    pub const MAGIC_LAZY: u64 = 0x5245_5354_4c41_5a59; // "RESTLAZY"
    pub const OFF_MAGIC: usize = 0;
    /// Incremented on every restore of the same lineage (copied from the image + 1).
    pub const OFF_GENERATION: usize = 8;
    /// Address and length of the restore blob region the library should unmap.
    pub const OFF_BLOB_ADDR: usize = 16;
    pub const OFF_BLOB_LEN: usize = 24;
    pub const LEN: usize = 32;
}

/// The library's table of restored threads ([`LibraryInfo::thread_table_addr`]), one entry
/// per thread of the image. A restored thread keeps, in glibc's `pthread->tid`, the TID it had
/// when the program first ran, so that lock owners recorded in memory (recursive and
/// error-checking mutexes, glibc's own loader lock) still name it; its TID in this run is in
/// the table, for the library's `pthread_kill` to signal it by. The loader writes the first two
/// fields and the main thread's TID; `clone(CLONE_PARENT_SETTID)` writes each other thread's.
pub mod thread_table {
    pub const ENTRY_LEN: usize = 16;
    /// `&pthread->tid` of the thread (0: unused entry).
    pub const OFF_TID_ADDRESS: usize = 0;
    /// The TID glibc keeps at that address (i32).
    pub const OFF_KEPT_TID: usize = 8;
    /// The thread's TID in this run (i32).
    pub const OFF_TID: usize = 12;
}

/// CRC-32 (IEEE) used for every checksum in the format.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The fixed header at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub flags: u32,
    pub page_size: u64,
}

impl Header {
    pub fn current() -> Self {
        Header {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR_SINGLE,
            flags: 0,
            page_size: PAGE_SIZE,
        }
    }

    /// The header of an incremental image.
    pub fn incremental() -> Self {
        Header {
            minor: FORMAT_MINOR_INCREMENTAL,
            flags: FLAG_INCREMENTAL,
            ..Header::current()
        }
    }

    /// The header of a process tree's image.
    pub fn tree() -> Self {
        Header {
            minor: FORMAT_MINOR_TREE,
            ..Header::current()
        }
    }

    /// Bytes 0..8 magic, 8..10 major, 10..12 minor, 12..16 flags, 16..24 page size,
    /// 24..60 zero, 60..64 CRC-32 of bytes 0..60.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.page_size.to_le_bytes());
        let crc = crc32(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The fields of `b` as they are, checking nothing (not even the magic or CRC):
    /// [`parse_header`] is the checked form.
    pub fn decode_unchecked(b: &[u8; HEADER_LEN]) -> Self {
        Header {
            major: le_u16(b, 8),
            minor: le_u16(b, 10),
            flags: le_u32(b, 12),
            page_size: le_u64(b, 16),
        }
    }
}

/// The fixed footer in the last 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub metadata_offset: u64,
    pub metadata_len: u64,
    pub metadata_crc32: u32,
    pub metadata_encoding: u32,
    /// Length of the whole file, footer included: detects truncation and appended bytes.
    pub file_len: u64,
}

impl Footer {
    /// Bytes 0..8 magic, 8..16 metadata offset, 16..24 metadata length, 24..28 metadata
    /// CRC-32, 28..32 encoding, 32..40 file length, 40..60 zero, 60..64 CRC-32 of 0..60.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..16].copy_from_slice(&self.metadata_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.metadata_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.metadata_crc32.to_le_bytes());
        b[28..32].copy_from_slice(&self.metadata_encoding.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_len.to_le_bytes());
        let crc = crc32(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The fields of `b` as they are, checking nothing (not even the magic or CRC):
    /// [`parse_footer`] is the checked form.
    pub fn decode_unchecked(b: &[u8; FOOTER_LEN]) -> Self {
        Footer {
            metadata_offset: le_u64(b, 8),
            metadata_len: le_u64(b, 16),
            metadata_crc32: le_u32(b, 24),
            metadata_encoding: le_u32(b, 28),
            file_len: le_u64(b, 32),
        }
    }
}

// Callers pass fixed-size arrays and constant offsets inside them: the slices cannot fail.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Serializes the metadata (the writer appends it after the last chunk).
pub fn encode_metadata(meta: &Metadata) -> Vec<u8> {
    // Serializing plain structs of integers, strings and vectors cannot fail.
    serde_json::to_vec(meta).unwrap_or_default()
}

/// The digest that names an image as a parent: SHA-256 of its metadata bytes, in hex. The
/// metadata lists every chunk's CRC-32 and length (and the capture's time and PID), so it
/// pins the whole image while a chain is verified by reading only each link's metadata.
pub fn metadata_digest(metadata: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(metadata);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}
