//! Reading an image: header, footer and metadata are parsed and validated before anything
//! else looks at them; chunks are checked against their CRC as they are read.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{
    crc32, le_u32, validate_metadata, Chunk, Compression, Footer, Header, Metadata,
    ValidationError, FIRST_CHUNK_OFFSET, FOOTER_LEN, FOOTER_MAGIC, FORMAT_MAJOR, FORMAT_MINOR,
    HEADER_LEN, HEADER_MAGIC, MAX_METADATA_LEN, METADATA_ENCODING_JSON, PAGE_SIZE,
};

/// Why an image cannot be read. Every variant says where the problem is.
#[derive(Debug)]
pub enum ReadError {
    Io(String, std::io::Error),
    TooShort { len: u64 },
    BadMagic { what: &'static str },
    BadCrc { what: String },
    UnsupportedVersion { major: u16, minor: u16 },
    UnsupportedFlags(u32),
    BadPageSize(u64),
    Truncated { expected: u64, actual: u64 },
    BadFooter(String),
    Metadata(String),
    Invalid(ValidationError),
    Chunk { index: usize, reason: String },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(what, e) => write!(f, "{what}: {e}"),
            ReadError::TooShort { len } => {
                write!(f, "file is {len} bytes, too short to be a forkpoint image (truncated?)")
            }
            ReadError::BadMagic { what } => write!(f, "bad magic in the {what}: not a forkpoint image, or damaged"),
            ReadError::BadCrc { what } => write!(f, "checksum mismatch in the {what}: the image is corrupted"),
            ReadError::UnsupportedVersion { major, minor } => write!(
                f,
                "image format version {major}.{minor} is not supported (this forkpoint reads {FORMAT_MAJOR}.0 to {FORMAT_MAJOR}.{FORMAT_MINOR})"
            ),
            ReadError::UnsupportedFlags(x) => write!(f, "image header has unsupported flags {x:#x}"),
            ReadError::BadPageSize(p) => write!(f, "image page size {p} is not {PAGE_SIZE}"),
            ReadError::Truncated { expected, actual } => write!(
                f,
                "image is truncated or has trailing bytes: footer says {expected} bytes, file has {actual}"
            ),
            ReadError::BadFooter(s) => write!(f, "bad footer: {s}"),
            ReadError::Metadata(s) => write!(f, "metadata cannot be decoded: {s}"),
            ReadError::Invalid(e) => write!(f, "metadata is inconsistent: {e}"),
            ReadError::Chunk { index, reason } => write!(f, "chunk {index}: {reason}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(_, e) => Some(e),
            ReadError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Parses and checks the 64-byte header.
pub fn parse_header(b: &[u8; HEADER_LEN]) -> Result<Header, ReadError> {
    if b[0..8] != HEADER_MAGIC {
        return Err(ReadError::BadMagic { what: "header" });
    }
    if crc32(&b[0..60]) != le_u32(b, 60) {
        return Err(ReadError::BadCrc {
            what: "header".into(),
        });
    }
    let h = Header::decode_unchecked(b);
    if h.major != FORMAT_MAJOR || h.minor > FORMAT_MINOR {
        return Err(ReadError::UnsupportedVersion {
            major: h.major,
            minor: h.minor,
        });
    }
    let known = if h.minor >= crate::FORMAT_MINOR_INCREMENTAL {
        crate::FLAG_INCREMENTAL
    } else {
        0
    };
    if h.flags & !known != 0 {
        return Err(ReadError::UnsupportedFlags(h.flags));
    }
    if h.page_size != PAGE_SIZE {
        return Err(ReadError::BadPageSize(h.page_size));
    }
    Ok(h)
}

/// Parses and checks the 64-byte footer against the file's actual length.
pub fn parse_footer(b: &[u8; FOOTER_LEN], file_len: u64) -> Result<Footer, ReadError> {
    if b[0..8] != FOOTER_MAGIC {
        return Err(ReadError::BadMagic {
            what: "footer (truncated image?)",
        });
    }
    if crc32(&b[0..60]) != le_u32(b, 60) {
        return Err(ReadError::BadCrc {
            what: "footer".into(),
        });
    }
    let f = Footer::decode_unchecked(b);
    if f.file_len != file_len {
        return Err(ReadError::Truncated {
            expected: f.file_len,
            actual: file_len,
        });
    }
    if f.metadata_encoding != METADATA_ENCODING_JSON {
        return Err(ReadError::BadFooter(format!(
            "unknown metadata encoding {}",
            f.metadata_encoding
        )));
    }
    if f.metadata_len > MAX_METADATA_LEN {
        return Err(ReadError::BadFooter(format!(
            "metadata length {} exceeds the limit of {MAX_METADATA_LEN} bytes",
            f.metadata_len
        )));
    }
    let end = f.metadata_offset.checked_add(f.metadata_len);
    if f.metadata_offset < FIRST_CHUNK_OFFSET || end != file_len.checked_sub(FOOTER_LEN as u64) {
        return Err(ReadError::BadFooter(format!(
            "metadata at file offset {} ({} bytes) does not lie between the chunk area \
             (offset {FIRST_CHUNK_OFFSET}) and the footer (offset {})",
            f.metadata_offset,
            f.metadata_len,
            file_len.saturating_sub(FOOTER_LEN as u64)
        )));
    }
    Ok(f)
}

/// A source of image bytes that can be read at any offset: a [`File`], or bytes in memory
/// (`[u8]`, `Vec<u8>`), or a reference to either.
pub trait ReadAt {
    /// Length of the whole image in bytes.
    fn total_len(&self) -> io::Result<u64>;
    /// Fills `buf` with the bytes at `offset`; fails with `UnexpectedEof` past the end.
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn total_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn total_len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some((start, start.checked_add(buf.len())?)))
            .and_then(|(start, end)| self.get(start..end));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn total_len(&self) -> io::Result<u64> {
        self.as_slice().total_len()
    }
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_fully_at(buf, offset)
    }
}

/// A part of a file: a tree member's image inside the tree's image. Offsets are relative to
/// the part's start.
pub struct FileRange {
    file: File,
    start: u64,
    len: u64,
}

impl ReadAt for FileRange {
    fn total_len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            ));
        }
        FileExt::read_exact_at(&self.file, buf, self.start + offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn total_len(&self) -> io::Result<u64> {
        (**self).total_len()
    }
    fn read_fully_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_fully_at(buf, offset)
    }
}

/// An open, validated image, read from a file or a part of one (the default) or any other
/// [`ReadAt`].
pub struct ImageFile<R = FileRange> {
    pub header: Header,
    pub footer: Footer,
    pub metadata: Metadata,
    /// [`crate::metadata_digest`] of this image's metadata: what a child image names it by.
    pub digest: String,
    source: R,
}

impl<R> fmt::Debug for ImageFile<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageFile")
            .field("header", &self.header)
            .field("footer", &self.footer)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl ImageFile<FileRange> {
    /// Opens `path`, checks header, footer, metadata checksum and consistency.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::open_range(path, None)
    }

    /// Opens the image of tree member `pid` in the tree image `tree` (the root's image is
    /// the tree's own), with the same checks as [`ImageFile::open`].
    pub fn open_member(&self, path: &Path, pid: i32) -> Result<Self, ReadError> {
        let member = self
            .metadata
            .tree
            .as_ref()
            .and_then(|t| t.members.iter().find(|m| m.pid == pid))
            .ok_or_else(|| {
                ReadError::Invalid(ValidationError(format!(
                    "the image holds no tree member with pid {pid}"
                )))
            })?;
        if let Some(status) = member.exited {
            return Err(ReadError::Invalid(ValidationError(format!(
                "tree member {pid} had exited (wait status {status:#x}): it has no image"
            ))));
        }
        if member.image_offset == 0 {
            return Self::open_range(path, None);
        }
        let img = Self::open_range(path, Some((member.image_offset, member.image_len)))?;
        if img.metadata.tree.is_some() || img.metadata.process.pid != pid {
            return Err(ReadError::Invalid(ValidationError(format!(
                "the image of tree member {pid} (file offset {}) is not that process's",
                member.image_offset
            ))));
        }
        Ok(img)
    }

    fn open_range(path: &Path, range: Option<(u64, u64)>) -> Result<Self, ReadError> {
        let file = File::open(path)
            .map_err(|e| ReadError::Io(format!("cannot open {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| ReadError::Io(format!("cannot stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(ReadError::Io(
                format!("cannot read {}", path.display()),
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let (start, len) = range.unwrap_or((0, meta.len()));
        Self::from_reader(FileRange { file, start, len })
    }

    pub fn file(&self) -> &File {
        &self.source.file
    }
}

impl<'a> ImageFile<&'a [u8]> {
    /// Reads an image held in memory (the whole file's bytes), with the same checks as
    /// [`ImageFile::open`].
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, ReadError> {
        Self::from_reader(bytes)
    }
}

impl<R: ReadAt> ImageFile<R> {
    /// Reads and checks header, footer, metadata checksum and consistency from `source`.
    pub fn from_reader(source: R) -> Result<Self, ReadError> {
        let len = source
            .total_len()
            .map_err(|e| ReadError::Io("cannot get the image's length".into(), e))?;
        if len < FIRST_CHUNK_OFFSET + FOOTER_LEN as u64 {
            return Err(ReadError::TooShort { len });
        }
        let mut hb = [0u8; HEADER_LEN];
        read_exact_at(&source, &mut hb, 0)?;
        let header = parse_header(&hb)?;
        let mut fb = [0u8; FOOTER_LEN];
        read_exact_at(&source, &mut fb, len - FOOTER_LEN as u64)?;
        // parse_footer bounds the metadata by MAX_METADATA_LEN and by the file's length.
        let footer = parse_footer(&fb, len)?;
        let mut mb = vec![0u8; footer.metadata_len as usize];
        read_exact_at(&source, &mut mb, footer.metadata_offset)?;
        if crc32(&mb) != footer.metadata_crc32 {
            return Err(ReadError::BadCrc {
                what: format!(
                    "metadata (file offset {}, {} bytes)",
                    footer.metadata_offset, footer.metadata_len
                ),
            });
        }
        let metadata = decode_metadata(&mb)?;
        validate_metadata(&metadata, footer.metadata_offset).map_err(ReadError::Invalid)?;
        let incremental = header.flags & crate::FLAG_INCREMENTAL != 0;
        if incremental != metadata.parent.is_some() {
            return Err(ReadError::Invalid(ValidationError(if incremental {
                "the header says incremental but the metadata names no parent image".into()
            } else {
                "the metadata names a parent image but the header is not incremental".into()
            })));
        }
        if incremental && metadata.tree.is_some() {
            return Err(ReadError::Invalid(ValidationError(
                "a process tree cannot be incremental".into(),
            )));
        }
        if metadata.tree.is_some() && header.minor < crate::FORMAT_MINOR_TREE {
            return Err(ReadError::Invalid(ValidationError(format!(
                "a process tree in an image of format {}.{} (trees need {}.{})",
                header.major,
                header.minor,
                crate::FORMAT_MAJOR,
                crate::FORMAT_MINOR_TREE
            ))));
        }
        Ok(ImageFile {
            header,
            footer,
            metadata,
            digest: crate::metadata_digest(&mb),
            source,
        })
    }

    /// Reads a chunk's stored bytes and checks their CRC.
    pub fn read_chunk_stored(&self, index: usize, buf: &mut Vec<u8>) -> Result<(), ReadError> {
        let chunk = self.chunk(index)?;
        buf.clear();
        // Validation bounded stored_len by the file's length.
        buf.resize(chunk.stored_len as usize, 0);
        read_exact_at(&self.source, buf, chunk.offset)?;
        if crc32(buf) != chunk.crc32 {
            return Err(ReadError::BadCrc {
                what: format!("chunk {index} (file offset {})", chunk.offset),
            });
        }
        Ok(())
    }

    /// Reads, checks and decompresses chunk `index` into `out`, which must be `raw_len` long.
    pub fn read_chunk(
        &self,
        index: usize,
        scratch: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Result<(), ReadError> {
        self.read_chunk_stored(index, scratch)?;
        let chunk = self.chunk(index)?;
        decode_chunk(index, chunk, scratch, out)
    }

    /// Reads, checks and decompresses chunk `index` into a new buffer of `raw_len` bytes.
    pub fn read_chunk_to_vec(&self, index: usize) -> Result<Vec<u8>, ReadError> {
        let chunk = self.chunk(index)?;
        let mut out = vec![0u8; chunk.raw_len as usize];
        let mut scratch = Vec::new();
        self.read_chunk(index, &mut scratch, &mut out)?;
        Ok(out)
    }

    /// Like [`ImageFile::read_chunk`], for many chunks in a row on one thread: reuses
    /// `reader`'s buffer and zstd context, and reads a store-only chunk straight into `out`,
    /// checking its CRC there piece by piece as it arrives (no second copy). On error `out`
    /// holds unspecified bytes.
    pub fn read_chunk_into(
        &self,
        index: usize,
        reader: &mut ChunkReader,
        out: &mut [u8],
    ) -> Result<(), ReadError> {
        let chunk = self.chunk(index)?;
        if out.len() as u64 != chunk.raw_len {
            return Err(ReadError::Chunk {
                index,
                reason: "output buffer size mismatch".into(),
            });
        }
        match chunk.compression {
            Compression::None => {
                if chunk.stored_len != chunk.raw_len {
                    return Err(ReadError::Chunk {
                        index,
                        reason: "stored length differs from raw length".into(),
                    });
                }
                let mut crc = crc32fast::Hasher::new();
                let mut at = chunk.offset;
                for piece in out.chunks_mut(DIRECT_READ_PIECE) {
                    read_exact_at(&self.source, piece, at)?;
                    crc.update(piece);
                    at = at.saturating_add(piece.len() as u64);
                }
                if crc.finalize() != chunk.crc32 {
                    return Err(ReadError::BadCrc {
                        what: format!("chunk {index} (file offset {})", chunk.offset),
                    });
                }
                Ok(())
            }
            Compression::Zstd => {
                // The buffer only grows (zero-filling just the new part): no memset per chunk.
                // Validation bounded stored_len by the file's length.
                let len = chunk.stored_len as usize;
                if reader.scratch.len() < len {
                    reader.scratch.resize(len, 0);
                }
                let stored = &mut reader.scratch[..len];
                read_exact_at(&self.source, stored, chunk.offset)?;
                if crc32(stored) != chunk.crc32 {
                    return Err(ReadError::BadCrc {
                        what: format!("chunk {index} (file offset {})", chunk.offset),
                    });
                }
                let dctx = zstd_context(&mut reader.dctx).map_err(|e| ReadError::Chunk {
                    index,
                    reason: format!("zstd: {e}"),
                })?;
                // Each call decodes its frames from a fresh start, whatever the last one left.
                let n = dctx
                    .decompress_to_buffer(&*stored, out)
                    .map_err(|e| ReadError::Chunk {
                        index,
                        reason: format!("zstd: {e}"),
                    })?;
                if n != out.len() {
                    return Err(ReadError::Chunk {
                        index,
                        reason: format!("decompressed to {n} bytes, expected {}", out.len()),
                    });
                }
                Ok(())
            }
        }
    }

    /// Reads blob `index` (pipe contents, deleted file, ...) and checks its CRC.
    pub fn read_blob(&self, index: u32) -> Result<Vec<u8>, ReadError> {
        let blob = self
            .metadata
            .blobs
            .get(index as usize)
            .ok_or(ReadError::Chunk {
                index: index as usize,
                reason: "no such blob".into(),
            })?;
        // Validation bounded the length by the file's data area.
        let mut buf = vec![0u8; blob.len as usize];
        read_exact_at(&self.source, &mut buf, blob.offset)?;
        if crc32(&buf) != blob.crc32 {
            return Err(ReadError::BadCrc {
                what: format!("blob {index} (file offset {})", blob.offset),
            });
        }
        Ok(buf)
    }

    /// The chunk's entry in the page index.
    pub fn chunk(&self, index: usize) -> Result<&Chunk, ReadError> {
        self.metadata.chunks.get(index).ok_or(ReadError::Chunk {
            index,
            reason: "no such chunk".into(),
        })
    }

    /// Where the bytes come from.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Gives the source back.
    pub fn into_source(self) -> R {
        self.source
    }
}

/// Store-only chunks read straight into their destination are read in pieces of this many
/// bytes, each checksummed while it is still in the cache.
const DIRECT_READ_PIECE: usize = 256 << 10;

/// What [`ImageFile::read_chunk_into`] reuses from one chunk to the next: a buffer for the
/// stored bytes and a zstd decompression context. One per thread.
#[derive(Default)]
pub struct ChunkReader {
    scratch: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

impl ChunkReader {
    pub fn new() -> ChunkReader {
        ChunkReader::default()
    }
}

impl fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkReader")
            .field("scratch_len", &self.scratch.len())
            .finish_non_exhaustive()
    }
}

/// The reader's zstd context, created on first use.
fn zstd_context<'a>(
    slot: &'a mut Option<zstd::bulk::Decompressor<'static>>,
) -> io::Result<&'a mut zstd::bulk::Decompressor<'static>> {
    match slot {
        Some(d) => Ok(d),
        None => Ok(slot.insert(zstd::bulk::Decompressor::new()?)),
    }
}

/// Decodes metadata bytes (JSON) without validating them.
pub fn decode_metadata(bytes: &[u8]) -> Result<Metadata, ReadError> {
    serde_json::from_slice(bytes).map_err(|e| ReadError::Metadata(e.to_string()))
}

/// Decompresses a chunk's (already CRC-checked) stored bytes into `out`.
pub fn decode_chunk(
    index: usize,
    chunk: &Chunk,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), ReadError> {
    if out.len() as u64 != chunk.raw_len {
        return Err(ReadError::Chunk {
            index,
            reason: "output buffer size mismatch".into(),
        });
    }
    match chunk.compression {
        Compression::None => {
            if stored.len() != out.len() {
                return Err(ReadError::Chunk {
                    index,
                    reason: "stored length differs from raw length".into(),
                });
            }
            out.copy_from_slice(stored);
        }
        Compression::Zstd => {
            let n =
                zstd::bulk::decompress_to_buffer(stored, out).map_err(|e| ReadError::Chunk {
                    index,
                    reason: format!("zstd: {e}"),
                })?;
            if n != out.len() {
                return Err(ReadError::Chunk {
                    index,
                    reason: format!("decompressed to {n} bytes, expected {}", out.len()),
                });
            }
        }
    }
    Ok(())
}

fn read_exact_at<R: ReadAt + ?Sized>(src: &R, buf: &mut [u8], at: u64) -> Result<(), ReadError> {
    src.read_fully_at(buf, at)
        .map_err(|e| ReadError::Io(format!("reading {} bytes at offset {at}", buf.len()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{sample_metadata, ImageBuilder};

    const PAGE: usize = PAGE_SIZE as usize;

    /// Zstd chunks (large, then smaller: the reused buffer shrinks), a store-only chunk
    /// longer than one direct-read piece, and one shorter.
    fn image() -> Vec<u8> {
        let mut meta = sample_metadata();
        let start = meta.mappings[0].start;
        meta.mappings[0].end = start + 256 * PAGE_SIZE;
        let text: Vec<u8> = (0..100 * PAGE).map(|i| b"forkpoint "[i % 10]).collect();
        let noise: Vec<u8> = (0..100 * PAGE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut b = ImageBuilder::new(meta);
        b.chunk_size(80 * PAGE_SIZE)
            .pages(start, &noise[..80 * PAGE])
            .pages(start + 80 * PAGE_SIZE, &text[..10 * PAGE])
            .end_chunk()
            .compression(Compression::None)
            .pages(start + 100 * PAGE_SIZE, &noise[..80 * PAGE])
            .pages(start + 180 * PAGE_SIZE, &text[..3 * PAGE])
            .end_chunk()
            .compression(Compression::Zstd)
            .pages(start + 200 * PAGE_SIZE, &text[..PAGE]);
        b.build()
    }

    fn by_read_chunk(img: &ImageFile<&[u8]>, i: usize) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; img.metadata.chunks[i].raw_len as usize];
        img.read_chunk(i, &mut Vec::new(), &mut out)
            .map(|()| out)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn read_chunk_into_matches_read_chunk() {
        let bytes = image();
        let img = ImageFile::from_bytes(&bytes).unwrap();
        let kinds: Vec<_> = img.metadata.chunks.iter().map(|c| c.compression).collect();
        assert!(kinds.contains(&Compression::None) && kinds.contains(&Compression::Zstd));
        assert!(img
            .metadata
            .chunks
            .iter()
            .any(|c| c.compression == Compression::None && c.raw_len as usize > DIRECT_READ_PIECE));
        let mut reader = ChunkReader::new();
        for (i, c) in img.metadata.chunks.iter().enumerate() {
            let mut out = vec![0xa5u8; c.raw_len as usize];
            img.read_chunk_into(i, &mut reader, &mut out).unwrap();
            assert_eq!(out, by_read_chunk(&img, i).unwrap(), "chunk {i}");
        }
        // A buffer of the wrong size, or a chunk that does not exist, is refused.
        let mut small = vec![0u8; PAGE];
        assert!(img.read_chunk_into(0, &mut reader, &mut small).is_err());
        assert!(img.read_chunk_into(99, &mut reader, &mut small).is_err());
    }

    #[test]
    fn read_chunk_into_refuses_what_read_chunk_refuses() {
        let bytes = image();
        let img = ImageFile::from_bytes(&bytes).unwrap();
        let good: Vec<Vec<u8>> = (0..img.metadata.chunks.len())
            .map(|i| by_read_chunk(&img, i).unwrap())
            .collect();
        let chunk_area = FIRST_CHUNK_OFFSET as usize..img.footer.metadata_offset as usize;
        // One damaged byte at a time, all over the chunk area; the reader is reused across
        // failures and must still read the intact chunks.
        let mut reader = ChunkReader::new();
        for at in chunk_area.step_by(97) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x5a;
            let img = ImageFile::from_bytes(&damaged).unwrap();
            for (i, c) in img.metadata.chunks.iter().enumerate() {
                let mut out = vec![0u8; c.raw_len as usize];
                let got = img.read_chunk_into(i, &mut reader, &mut out);
                let want = by_read_chunk(&img, i);
                assert_eq!(got.is_ok(), want.is_ok(), "byte {at}, chunk {i}");
                if got.is_ok() {
                    assert_eq!(out, good[i], "byte {at}, chunk {i}");
                }
            }
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn io_errors_keep_their_source() {
        let e = ReadError::Io(
            "cannot open x".into(),
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        let src = e.source().expect("an I/O error has its source");
        assert_eq!(src.to_string(), "gone");
        assert!(ReadError::TooShort { len: 3 }.source().is_none());
    }
}
