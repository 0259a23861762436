//! Building images in memory, for tests: this crate's, the loader's and the end-to-end ones
//! need valid images to start from and damaged ones to see refused.
//!
//! [`ImageBuilder`] lays out a complete file from a [`Metadata`] skeleton and page contents:
//! header, chunks (zstd or stored, stored ones page-aligned), metadata with the page index
//! filled in, footer, every checksum right. It checks nothing else, so a test can build an
//! image whose pages lie outside any mapping or are stored twice, and see the reader refuse
//! it. [`rewrite_metadata`] and [`rewrite_header`] change an existing image and reseal it.
//!
//! The library's writer does not use this module (it writes with raw syscalls from a forked
//! child); it lays out the same format, which `docs/image-format.md` specifies.

use std::io::{self, Write};
use std::path::Path;

use crate::{
    crc32, encode_metadata, AltStack, Chunk, Compression, Contents, Footer, Header, Mapping,
    MappingKind, Metadata, PageRun, ResumeRegs, ThreadState, FIRST_CHUNK_OFFSET, FOOTER_LEN,
    HEADER_LEN, MAX_CHUNK_RAW_LEN, METADATA_ENCODING_JSON, PAGE_SIZE,
};

/// Raw bytes per chunk unless [`ImageBuilder::chunk_size`] says otherwise.
pub const DEFAULT_CHUNK_RAW_LEN: u64 = 4 << 20;

#[derive(Debug, Clone)]
struct PendingChunk {
    compression: Compression,
    level: i32,
    runs: Vec<PageRun>,
    data: Vec<u8>,
}

/// Builds a whole image file in memory. See the [module documentation](self).
///
/// ```
/// use forkpoint_image::{build::{sample_metadata, ImageBuilder}, ImageFile, PAGE_SIZE};
/// let meta = sample_metadata();
/// let start = meta.mappings[0].start;
/// let bytes = ImageBuilder::new(meta)
///     .pages(start, &[7u8; PAGE_SIZE as usize])
///     .build();
/// let image = ImageFile::from_bytes(&bytes).unwrap();
/// assert_eq!(image.read_chunk_to_vec(0).unwrap(), vec![7u8; PAGE_SIZE as usize]);
/// ```
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    header: Header,
    metadata: Metadata,
    compression: Compression,
    zstd_level: i32,
    chunk_raw_len: u64,
    chunks: Vec<PendingChunk>,
    /// Pages may still go into the last chunk.
    chunk_open: bool,
}

impl ImageBuilder {
    /// Starts an image from `metadata`. Its `chunks` are replaced by the ones this builder
    /// makes; everything else is written as given.
    pub fn new(metadata: Metadata) -> Self {
        ImageBuilder {
            header: Header::current(),
            metadata,
            compression: Compression::Zstd,
            zstd_level: 1,
            chunk_raw_len: DEFAULT_CHUNK_RAW_LEN,
            chunks: Vec::new(),
            chunk_open: false,
        }
    }

    /// The header to write (its CRC is computed); [`Header::current`] by default.
    pub fn header(&mut self, header: Header) -> &mut Self {
        self.header = header;
        self
    }

    /// How the pages added from now on are stored (zstd by default). A change starts a new
    /// chunk.
    pub fn compression(&mut self, compression: Compression) -> &mut Self {
        self.compression = compression;
        self
    }

    /// The zstd level of the pages added from now on (1 by default). A change starts a new
    /// chunk.
    pub fn zstd_level(&mut self, level: i32) -> &mut Self {
        self.zstd_level = level;
        self
    }

    /// Raw bytes per chunk from now on: a chunk is closed when it reaches this size.
    ///
    /// # Panics
    /// Unless `raw_len` is a multiple of [`PAGE_SIZE`] from one page to [`MAX_CHUNK_RAW_LEN`].
    pub fn chunk_size(&mut self, raw_len: u64) -> &mut Self {
        assert!(
            raw_len & (PAGE_SIZE - 1) == 0 && (PAGE_SIZE..=MAX_CHUNK_RAW_LEN).contains(&raw_len),
            "chunk size {raw_len} is not 1 to {} pages",
            MAX_CHUNK_RAW_LEN / PAGE_SIZE
        );
        self.chunk_raw_len = raw_len;
        self
    }

    /// Adds the pages `bytes` at address `addr` to the current chunk, spilling into new
    /// chunks at the chunk size. Pages following the previous ones extend its run.
    ///
    /// # Panics
    /// If `addr` or `bytes.len()` is not a multiple of [`PAGE_SIZE`].
    pub fn pages(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        assert!(
            (addr | bytes.len() as u64) & (PAGE_SIZE - 1) == 0,
            "pages at {addr:#x}, {} bytes: not page-aligned",
            bytes.len()
        );
        let mut addr = addr;
        let mut rest = bytes;
        while !rest.is_empty() {
            let limit = self.chunk_raw_len;
            let reuse = self.chunk_open
                && self.chunks.last().is_some_and(|c| {
                    (c.data.len() as u64) < limit
                        && c.compression == self.compression
                        && c.level == self.zstd_level
                });
            if !reuse {
                self.chunks.push(PendingChunk {
                    compression: self.compression,
                    level: self.zstd_level,
                    runs: Vec::new(),
                    data: Vec::new(),
                });
                self.chunk_open = true;
            }
            let last = self.chunks.len() - 1;
            let open = &mut self.chunks[last];
            let room = (limit - open.data.len() as u64) as usize;
            let take = room.min(rest.len());
            let pages = take as u64 / PAGE_SIZE;
            match open.runs.last_mut() {
                Some(r) if r.addr.checked_add(r.pages * PAGE_SIZE) == Some(addr) => {
                    r.pages += pages
                }
                _ => open.runs.push(PageRun { addr, pages }),
            }
            open.data.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            addr = addr.wrapping_add(take as u64);
        }
        self
    }

    /// Closes the current chunk: pages added next start a new one.
    pub fn end_chunk(&mut self) -> &mut Self {
        self.chunk_open = false;
        self
    }

    /// The metadata as given (its `chunks` are filled in only by [`build`](Self::build)).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Changes the metadata before building.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// The whole image file. `metadata.chunks` is filled in, and `stats.pages_stored`,
    /// `stats.bytes_raw` and `stats.bytes_stored` are set to what was stored.
    pub fn build(&self) -> Vec<u8> {
        self.build_with_metadata().0
    }

    /// The whole image file and the metadata written in it.
    pub fn build_with_metadata(&self) -> (Vec<u8>, Metadata) {
        let mut out = Vec::new();
        out.extend_from_slice(&self.header.encode());
        out.resize(FIRST_CHUNK_OFFSET as usize, 0);
        let mut meta = self.metadata.clone();
        meta.chunks.clear();
        let (mut pages, mut raw, mut stored) = (0u64, 0u64, 0u64);
        for c in &self.chunks {
            let bytes = match c.compression {
                Compression::None => {
                    // Stored chunks are page-aligned so a restart could map them directly.
                    let aligned = (out.len() as u64).next_multiple_of(PAGE_SIZE);
                    out.resize(aligned as usize, 0);
                    c.data.clone()
                }
                Compression::Zstd => zstd::bulk::compress(&c.data, c.level)
                    .unwrap_or_else(|e| panic!("zstd compression failed: {e}")),
            };
            meta.chunks.push(Chunk {
                offset: out.len() as u64,
                stored_len: bytes.len() as u64,
                raw_len: c.data.len() as u64,
                compression: c.compression,
                crc32: crc32(&bytes),
                runs: c.runs.clone(),
            });
            pages += c.data.len() as u64 / PAGE_SIZE;
            raw += c.data.len() as u64;
            stored += bytes.len() as u64;
            out.extend_from_slice(&bytes);
        }
        meta.stats.pages_stored = pages;
        meta.stats.bytes_raw = raw;
        meta.stats.bytes_stored = stored;
        let out = append_metadata(out, &meta);
        (out, meta)
    }

    /// Builds the image and writes it to `path` (created mode 0600, or truncated).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_file(path, &self.build())
    }
}

/// Appends `meta` and a footer to `out` (header and chunks): the file is complete.
fn append_metadata(mut out: Vec<u8>, meta: &Metadata) -> Vec<u8> {
    let mb = encode_metadata(meta);
    let footer = Footer {
        metadata_offset: out.len() as u64,
        metadata_len: mb.len() as u64,
        metadata_crc32: crc32(&mb),
        metadata_encoding: METADATA_ENCODING_JSON,
        file_len: (out.len() + mb.len() + FOOTER_LEN) as u64,
    };
    out.extend_from_slice(&mb);
    out.extend_from_slice(&footer.encode());
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Writes an image of `metadata` holding `pages` (address, page contents), zstd-compressed
/// in chunks of the default size, to `path` (created mode 0600, or truncated).
///
/// # Panics
/// If an address or a length in `pages` is not page-aligned.
pub fn write_image(path: &Path, metadata: &Metadata, pages: &[(u64, &[u8])]) -> io::Result<()> {
    let mut b = ImageBuilder::new(metadata.clone());
    for (addr, bytes) in pages {
        b.pages(*addr, bytes);
    }
    b.write(path)
}

/// Decodes the image `bytes`, lets `f` change its metadata, and returns the image with the
/// new metadata, footer and checksums. Header and chunks are kept byte for byte, so
/// `f` may break the image's consistency on purpose; nothing is validated.
///
/// # Panics
/// If the footer does not locate metadata that decodes (the image's own checksums are not
/// checked).
pub fn rewrite_metadata(bytes: &[u8], f: impl FnOnce(&mut Metadata)) -> Vec<u8> {
    let (offset, mb) = locate_metadata(bytes)
        .unwrap_or_else(|| panic!("rewrite_metadata: the footer locates no metadata"));
    let mut meta = crate::decode_metadata(mb)
        .unwrap_or_else(|e| panic!("rewrite_metadata: cannot decode the metadata: {e}"));
    f(&mut meta);
    append_metadata(bytes[..offset].to_vec(), &meta)
}

/// Returns the image `bytes` with the header `f` makes of the current one (its CRC
/// recomputed). Nothing is validated.
///
/// # Panics
/// If `bytes` is shorter than a header.
pub fn rewrite_header(bytes: &[u8], f: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&bytes[..HEADER_LEN]);
    let mut h = Header::decode_unchecked(&hb);
    f(&mut h);
    let mut out = bytes.to_vec();
    out[..HEADER_LEN].copy_from_slice(&h.encode());
    out
}

/// The metadata's offset and bytes as the footer of `bytes` says, if they lie in the file.
fn locate_metadata(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let footer_at = bytes.len().checked_sub(FOOTER_LEN)?;
    let mut fb = [0u8; FOOTER_LEN];
    fb.copy_from_slice(&bytes[footer_at..]);
    let footer = Footer::decode_unchecked(&fb);
    let start = usize::try_from(footer.metadata_offset).ok()?;
    let end = start.checked_add(usize::try_from(footer.metadata_len).ok()?)?;
    if end > footer_at {
        return None;
    }
    Some((start, &bytes[start..end]))
}

/// Makes every checksum and length of a (possibly damaged) image consistent, so that only
/// its content errors remain: the header CRC; the footer's magic, encoding, file length and
/// CRC; the metadata's length (up to the footer) and CRC; and, if the metadata decodes, each
/// chunk's CRC where the chunk lies inside the file (the metadata is then re-encoded).
/// Never panics; returns the bytes unchanged if they are too short to hold a header and a
/// footer. Fuzzing uses it to get past the checksums.
pub fn reseal(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return bytes.to_vec();
    }
    let mut out = bytes.to_vec();
    out[..8].copy_from_slice(&crate::HEADER_MAGIC);
    let crc = crc32(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());

    let footer_at = out.len() - FOOTER_LEN;
    let mut fb = [0u8; FOOTER_LEN];
    fb.copy_from_slice(&out[footer_at..]);
    let old = Footer::decode_unchecked(&fb);
    // Keep the metadata's start if it is plausible, else put it right after the header
    // page (or the header, for files shorter than a page).
    let start = match usize::try_from(old.metadata_offset) {
        Ok(s) if s >= HEADER_LEN && s <= footer_at => s,
        _ => (FIRST_CHUNK_OFFSET as usize).min(footer_at),
    };
    let mut body = out[..start].to_vec();
    let mut mb = out[start..footer_at].to_vec();
    if let Ok(mut meta) = crate::decode_metadata(&mb) {
        for c in &mut meta.chunks {
            let range = usize::try_from(c.offset).ok().and_then(|o| {
                let e = o.checked_add(usize::try_from(c.stored_len).ok()?)?;
                (e <= start).then_some(o..e)
            });
            if let Some(r) = range {
                c.crc32 = crc32(&body[r]);
            }
        }
        mb = encode_metadata(&meta);
    }
    let footer = Footer {
        metadata_offset: start as u64,
        metadata_len: mb.len() as u64,
        metadata_crc32: crc32(&mb),
        metadata_encoding: METADATA_ENCODING_JSON,
        file_len: (start + mb.len() + FOOTER_LEN) as u64,
    };
    body.extend_from_slice(&mb);
    body.extend_from_slice(&footer.encode());
    body
}

/// A small metadata skeleton that passes validation: one thread, an anonymous mapping of
/// 16 pages at `0x1000_0000` (stored contents; add pages there), a file mapping of
/// `/usr/lib/libexample.so` at `0x2000_0000` (4 pages, contents not stored) and a
/// 32-page stack ending at `0x7ffd_0000_0000`. Tests change what they need.
pub fn sample_metadata() -> Metadata {
    let mut m = Metadata::default();
    m.process.exe = "/usr/bin/example".into();
    m.process.cmdline = vec!["example".into(), "--flag".into()];
    m.process.pid = 4242;
    m.process.ppid = 1;
    m.process.cwd = "/tmp".into();
    m.process.umask = 0o022;
    m.checkpoint.seq = 1;
    m.checkpoint.trigger = "signal".into();
    m.library.version = env!("CARGO_PKG_VERSION").into();
    let stack_end = 0x7ffd_0000_0000u64;
    m.mappings = vec![
        Mapping {
            start: 0x1000_0000,
            end: 0x1000_0000 + 16 * PAGE_SIZE,
            prot: crate::PROT_READ | crate::PROT_WRITE,
            shared: false,
            offset: 0,
            name: String::new(),
            kind: MappingKind::Anonymous,
            contents: Contents::Stored,
            approximation: None,
            memory_object: None,
        },
        Mapping {
            start: 0x2000_0000,
            end: 0x2000_0000 + 4 * PAGE_SIZE,
            prot: crate::PROT_READ | crate::PROT_EXEC,
            shared: false,
            offset: 0,
            name: "/usr/lib/libexample.so".into(),
            kind: MappingKind::File {
                file: crate::FileId {
                    path: "/usr/lib/libexample.so".into(),
                    dev: 0x803,
                    inode: 1234,
                    size: 4 * PAGE_SIZE,
                    mtime_sec: 1_700_000_000,
                    mtime_nsec: 0,
                },
            },
            contents: Contents::NotStored,
            approximation: None,
            memory_object: None,
        },
        Mapping {
            start: stack_end - 32 * PAGE_SIZE,
            end: stack_end,
            prot: crate::PROT_READ | crate::PROT_WRITE,
            shared: false,
            offset: 0,
            name: "[stack]".into(),
            kind: MappingKind::Stack,
            contents: Contents::Stored,
            approximation: None,
            memory_object: None,
        },
    ];
    m.threads = vec![ThreadState {
        tid: 4242,
        name: "example".into(),
        regs: ResumeRegs {
            rsp: stack_end - 0x1000,
            rip: 0x2000_0100,
            ..ResumeRegs::default()
        },
        fs_base: 0x1000_0000 + 0x800,
        sigmask: 0,
        sigaltstack: AltStack {
            sp: 0,
            flags: 2, // SS_DISABLE
            size: 0,
        },
        tid_address: 0x1000_0000 + 0x8d0,
        robust_list: 0x1000_0000 + 0x8e0,
        robust_list_len: 24,
        rseq: None,
        affinity: Vec::new(),
        sched_policy: 0,
        sched_priority: 0,
    }];
    m
}
