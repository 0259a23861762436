//! `forkpoint compact IMAGE -o OUT`: an incremental image and its parents merged into one
//! whole image. Streams: one chunk of a link in, one chunk of the output out, so memory stays
//! a few MiB whatever the chain's size. The output is written as `OUT.tmp`, fsynced and
//! renamed, like an image the library writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use forkpoint_image::chain;
use forkpoint_image::pages::PageSet;
use forkpoint_image::read::ChunkReader;
use forkpoint_image::{
    self as image, Chunk, Compression, Footer, Header, ImageFile, PageRun, PAGE_SIZE,
};

use crate::{fmt_bytes, CliError};

/// Uncompressed bytes per output chunk (as the library writes them).
const CHUNK_RAW: usize = 4 << 20;

pub fn compact(path: &Path, images_dir: Option<&Path>, output: &Path) -> Result<(), CliError> {
    let leaf =
        ImageFile::open(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    if leaf.metadata.tree.is_some() {
        return Err(CliError::new(format!(
            "{} is a process tree's image, which is always whole",
            path.display()
        )));
    }
    let links = chain::resolve(path, leaf, images_dir).map_err(|e| CliError::new(e.to_string()))?;
    if links
        .iter()
        .any(|l| same_file(&l.path, output).unwrap_or(false))
    {
        return Err(CliError::usage(format!(
            "{} is part of the chain: write the whole image elsewhere",
            output.display()
        )));
    }
    let tmp = output.with_file_name(format!(
        "{}.tmp",
        output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let result = write_whole(&links, &tmp);
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(CliError::new(format!(
                "cannot write {}: {e}",
                tmp.display()
            )));
        }
    };
    fs::rename(&tmp, output).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CliError::new(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            output.display()
        ))
    })?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    eprintln!(
        "forkpoint: {} links merged into {} ({})",
        links.len(),
        output.display(),
        fmt_bytes(bytes)
    );
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (x, y) = (fs::metadata(a)?, fs::metadata(b)?);
    Ok(x.dev() == y.dev() && x.ino() == y.ino())
}

/// Pages gathered into the next output chunk.
struct Pending {
    raw: Vec<u8>,
    runs: Vec<PageRun>,
}

fn write_whole(links: &[chain::Link], tmp: &Path) -> io::Result<u64> {
    let leaf = &links[0].image;
    let level = leaf.metadata.stats.zstd_level;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    let mut header = vec![0u8; PAGE_SIZE as usize];
    header[..image::HEADER_LEN].copy_from_slice(&Header::current().encode());
    f.write_all(&header)?;
    let mut pos = PAGE_SIZE;
    let mut meta = leaf.metadata.clone();
    // The leaf's blobs (its descriptors' data) are its own, whole in every link.
    for (i, b) in meta.blobs.iter_mut().enumerate() {
        let bytes = leaf
            .read_blob(i as u32)
            .map_err(|e| io::Error::other(e.to_string()))?;
        f.write_all(&bytes)?;
        b.offset = pos;
        pos += bytes.len() as u64;
    }
    let metas: Vec<&image::Metadata> = links.iter().map(|l| &l.image.metadata).collect();
    let provided = chain::provided(&metas);
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut pending = Pending {
        raw: Vec::with_capacity(CHUNK_RAW),
        runs: Vec::new(),
    };
    let mut reader = ChunkReader::new();
    let mut buf = Vec::new();
    let mut stored = 0u64;
    for (link, want) in links.iter().zip(&provided) {
        let img = &link.image;
        for (i, c) in img.metadata.chunks.iter().enumerate() {
            let touches = c
                .runs
                .iter()
                .any(|r| want.touches(r.addr, r.addr + r.pages * PAGE_SIZE));
            if !touches {
                continue;
            }
            buf.resize(c.raw_len as usize, 0);
            img.read_chunk_into(i, &mut reader, &mut buf)
                .map_err(|e| io::Error::other(format!("{}: {e}", link.path.display())))?;
            copy_wanted(c, &buf, want, &mut pending, &mut |p| {
                flush(&mut f, &mut pos, p, level, &mut chunks, &mut stored)
            })?;
        }
    }
    flush(
        &mut f,
        &mut pos,
        &mut pending,
        level,
        &mut chunks,
        &mut stored,
    )?;
    meta.chunks = chunks;
    meta.parent = None;
    meta.inherited = Vec::new();
    meta.stats.pages_stored = stored;
    meta.stats.pages_inherited = 0;
    meta.stats.bytes_raw = stored * PAGE_SIZE;
    meta.stats.bytes_stored = meta.chunks.iter().map(|c| c.stored_len).sum();
    let mb = image::encode_metadata(&meta);
    f.write_all(&mb)?;
    let footer = Footer {
        metadata_offset: pos,
        metadata_len: mb.len() as u64,
        metadata_crc32: image::crc32(&mb),
        metadata_encoding: image::METADATA_ENCODING_JSON,
        file_len: pos + mb.len() as u64 + image::FOOTER_LEN as u64,
    };
    f.write_all(&footer.encode())?;
    f.sync_all()?;
    drop(f);
    // What was written must read back as a whole image.
    ImageFile::open(tmp).map_err(|e| io::Error::other(format!("the merged image: {e}")))?;
    Ok(footer.file_len)
}

/// The pages of chunk `c` (decompressed in `raw`) that `want` holds, appended to `pending`;
/// `flush` is called whenever it is full.
fn copy_wanted(
    c: &Chunk,
    raw: &[u8],
    want: &PageSet,
    pending: &mut Pending,
    flush: &mut dyn FnMut(&mut Pending) -> io::Result<()>,
) -> io::Result<()> {
    let mut off = 0u64;
    for r in &c.runs {
        let end = r.addr + r.pages * PAGE_SIZE;
        for (s, e) in want.clip(r.addr, end) {
            let mut a = s;
            // Runs of the output never join pages of two source runs: those may lie in two
            // neighbouring mappings, and a run must stay inside one.
            let mut first = true;
            while a < e {
                let room = (CHUNK_RAW - pending.raw.len()) as u64;
                let take = (e - a).min(room);
                let from = (off + (a - r.addr)) as usize;
                pending
                    .raw
                    .extend_from_slice(&raw[from..from + take as usize]);
                match pending.runs.last_mut() {
                    Some(last) if !first && last.addr + last.pages * PAGE_SIZE == a => {
                        last.pages += take / PAGE_SIZE
                    }
                    _ => pending.runs.push(PageRun {
                        addr: a,
                        pages: take / PAGE_SIZE,
                    }),
                }
                a += take;
                first = false;
                if pending.raw.len() == CHUNK_RAW {
                    flush(pending)?;
                }
            }
        }
        off += r.pages * PAGE_SIZE;
    }
    Ok(())
}

fn flush(
    f: &mut File,
    pos: &mut u64,
    p: &mut Pending,
    level: i32,
    chunks: &mut Vec<Chunk>,
    stored: &mut u64,
) -> io::Result<()> {
    if p.raw.is_empty() {
        return Ok(());
    }
    let compressed = if level != 0 {
        zstd::bulk::compress(&p.raw, level).ok()
    } else {
        None
    }
    .filter(|z| z.len() < p.raw.len());
    let (bytes, compression) = match &compressed {
        Some(z) => (z.as_slice(), Compression::Zstd),
        None => {
            // Stored chunks are page-aligned in the file.
            let aligned = pos.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            if aligned != *pos {
                f.seek(SeekFrom::Start(aligned))?;
                *pos = aligned;
            }
            (p.raw.as_slice(), Compression::None)
        }
    };
    f.write_all(bytes)?;
    chunks.push(Chunk {
        offset: *pos,
        stored_len: bytes.len() as u64,
        raw_len: p.raw.len() as u64,
        compression,
        crc32: image::crc32(bytes),
        runs: std::mem::take(&mut p.runs),
    });
    *pos += bytes.len() as u64;
    *stored += p.raw.len() as u64 / PAGE_SIZE;
    p.raw.clear();
    Ok(())
}
