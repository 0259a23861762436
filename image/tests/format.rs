//! The reader against valid, damaged and inconsistent images (named after Firecracker's
//! snapshot tests): every damage is refused with an error that says what and where.

use std::collections::BTreeMap;

use forkpoint_image::build::{reseal, sample_metadata, ImageBuilder};
use forkpoint_image::{
    rewrite_header, rewrite_metadata, write_image, Compression, Contents, FdEntry, FdKind,
    FdRestore, FileId, ImageFile, Mapping, MappingKind, Metadata, PageRun, ReadError, Rlimit, Rseq,
    SigAction, FIRST_CHUNK_OFFSET, FLAG_INCREMENTAL, FOOTER_LEN, FORMAT_MAJOR, FORMAT_MINOR,
    HEADER_LEN, PAGE_SIZE,
};

const PAGE: usize = PAGE_SIZE as usize;
const ANON: u64 = 0x1000_0000;
const STACK_END: u64 = 0x7ffd_0000_0000;

/// `n` pages whose bytes depend on `seed` and the position (compressible, not constant).
fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n * PAGE)
        .map(|i| seed.wrapping_add((i / 64) as u8) ^ (i as u8 & 3))
        .collect()
}

/// The pages `sample_image` stores, by address.
fn sample_pages() -> Vec<(u64, Vec<u8>)> {
    vec![
        (ANON, pattern(1, 6)),
        (ANON + 8 * PAGE_SIZE, pattern(2, 1)),
        (STACK_END - 3 * PAGE_SIZE, pattern(3, 3)),
    ]
}

/// A valid image: zstd chunks of at most 4 pages for the anonymous mapping (two chunks,
/// the second with two runs), then one stored (uncompressed) chunk for the stack.
fn sample_builder() -> ImageBuilder {
    let pages = sample_pages();
    let mut b = ImageBuilder::new(sample_metadata());
    b.chunk_size(4 * PAGE_SIZE);
    b.pages(pages[0].0, &pages[0].1)
        .pages(pages[1].0, &pages[1].1);
    b.compression(Compression::None).chunk_size(16 * PAGE_SIZE);
    b.pages(pages[2].0, &pages[2].1);
    b
}

fn sample_image() -> Vec<u8> {
    sample_builder().build()
}

fn open_err(bytes: &[u8]) -> ReadError {
    match ImageFile::from_bytes(bytes) {
        Ok(_) => panic!("a damaged image was accepted"),
        Err(e) => e,
    }
}

/// Opens `bytes`, expecting metadata validation to refuse it with a message containing
/// every one of `words`.
fn assert_invalid(bytes: &[u8], words: &[&str]) {
    match open_err(bytes) {
        ReadError::Invalid(e) => {
            for w in words {
                assert!(e.0.contains(w), "error {:?} does not mention {w:?}", e.0);
            }
        }
        e => panic!("expected a validation error, got {e}"),
    }
}

/// Every stored page of the image, by address.
fn read_all_pages<R: forkpoint_image::ReadAt>(img: &ImageFile<R>) -> BTreeMap<u64, Vec<u8>> {
    let mut pages = BTreeMap::new();
    let mut scratch = Vec::new();
    for (i, c) in img.metadata.chunks.iter().enumerate() {
        let mut out = vec![0u8; c.raw_len as usize];
        img.read_chunk(i, &mut scratch, &mut out).unwrap();
        let mut at = 0usize;
        for r in &c.runs {
            for p in 0..r.pages {
                let prev = pages.insert(r.addr + p * PAGE_SIZE, out[at..at + PAGE].to_vec());
                assert!(prev.is_none());
                at += PAGE;
            }
        }
        assert_eq!(at, out.len());
    }
    pages
}

fn expected_pages(list: &[(u64, Vec<u8>)]) -> BTreeMap<u64, Vec<u8>> {
    let mut pages = BTreeMap::new();
    for (addr, bytes) in list {
        for (i, p) in bytes.chunks(PAGE).enumerate() {
            pages.insert(addr + i as u64 * PAGE_SIZE, p.to_vec());
        }
    }
    pages
}

#[test]
fn roundtrip() {
    let (bytes, meta) = sample_builder().build_with_metadata();
    let img = ImageFile::from_bytes(&bytes).unwrap();
    assert_eq!(img.metadata, meta);
    assert_eq!(img.header, forkpoint_image::Header::current());
    assert_eq!(img.footer.file_len, bytes.len() as u64);
    assert_eq!(meta.chunks.len(), 3);
    assert_eq!(
        meta.chunks[1].runs,
        vec![
            PageRun {
                addr: ANON + 4 * PAGE_SIZE,
                pages: 2
            },
            PageRun {
                addr: ANON + 8 * PAGE_SIZE,
                pages: 1
            }
        ]
    );
    assert_eq!(meta.chunks[0].compression, Compression::Zstd);
    assert!(meta.chunks[0].stored_len < meta.chunks[0].raw_len);
    // The stored chunk is page-aligned in the file and holds the pages as they are.
    let stored = &meta.chunks[2];
    assert_eq!(stored.compression, Compression::None);
    assert_eq!(stored.offset % PAGE_SIZE, 0);
    let at = stored.offset as usize;
    assert_eq!(&bytes[at..at + 3 * PAGE], &sample_pages()[2].1[..]);
    assert_eq!(meta.stats.pages_stored, 10);
    assert_eq!(read_all_pages(&img), expected_pages(&sample_pages()));
    assert_eq!(img.read_chunk_to_vec(2).unwrap(), sample_pages()[2].1);

    // The same through a file.
    let dir = std::env::temp_dir().join(format!("fpk-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roundtrip.fpk");
    sample_builder().write(&path).unwrap();
    let img = ImageFile::open(&path).unwrap();
    assert_eq!(img.metadata, meta);
    assert_eq!(read_all_pages(&img), expected_pages(&sample_pages()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // write_image: one call, default chunking.
    let list = sample_pages();
    let refs: Vec<(u64, &[u8])> = list.iter().map(|(a, b)| (*a, &b[..])).collect();
    let path2 = dir.join("write_image.fpk");
    write_image(&path2, &sample_metadata(), &refs).unwrap();
    let img = ImageFile::open(&path2).unwrap();
    assert_eq!(img.metadata.chunks.len(), 1);
    assert_eq!(read_all_pages(&img), expected_pages(&list));

    // A missing file is an I/O error naming the path.
    let e = ImageFile::open(&dir.join("missing.fpk")).unwrap_err();
    assert!(e.to_string().contains("missing.fpk"), "{e}");
    // A directory is not an image.
    let e = ImageFile::open(&dir).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn roundtrip_many_chunks_and_levels() {
    let mut meta = sample_metadata();
    meta.mappings[0].end = ANON + 64 * PAGE_SIZE;
    let mut b = ImageBuilder::new(meta);
    b.chunk_size(3 * PAGE_SIZE).zstd_level(3);
    let a = pattern(9, 10);
    b.pages(ANON, &a);
    b.end_chunk();
    b.compression(Compression::None);
    let c = pattern(10, 2);
    b.pages(ANON + 20 * PAGE_SIZE, &c);
    b.compression(Compression::Zstd).zstd_level(19);
    let d = vec![0xAAu8; 5 * PAGE];
    b.pages(ANON + 30 * PAGE_SIZE, &d);
    let bytes = b.build();
    let img = ImageFile::from_bytes(&bytes).unwrap();
    // 10 pages in chunks of 3: 4 chunks; 2 stored pages: 1; 5 pages: 2.
    assert_eq!(img.metadata.chunks.len(), 7);
    let list = vec![
        (ANON, a),
        (ANON + 20 * PAGE_SIZE, c),
        (ANON + 30 * PAGE_SIZE, d),
    ];
    assert_eq!(read_all_pages(&img), expected_pages(&list));
    // The reader also works over an owned buffer.
    let img = ImageFile::from_reader(bytes.clone()).unwrap();
    assert_eq!(read_all_pages(&img), expected_pages(&list));
    // A buffer of the wrong size is refused, not overrun.
    let mut scratch = Vec::new();
    let mut small = vec![0u8; PAGE];
    assert!(img.read_chunk(0, &mut scratch, &mut small).is_err());
    assert!(img.read_chunk(99, &mut scratch, &mut small).is_err());
}

#[test]
fn test_bad_magic() {
    let good = sample_image();
    let mut b = good.clone();
    b[0] ^= 0x20;
    assert!(matches!(
        open_err(&b),
        ReadError::BadMagic { what: "header" }
    ));
    let mut b = good.clone();
    let n = b.len();
    b[n - FOOTER_LEN + 3] ^= 1;
    let e = open_err(&b);
    assert!(
        matches!(e, ReadError::BadMagic { what } if what.starts_with("footer")),
        "{e}"
    );
    // Not an image at all.
    let e = open_err(&vec![0u8; 3 * PAGE]);
    assert!(matches!(e, ReadError::BadMagic { .. }), "{e}");
}

#[test]
fn test_bad_crc() {
    let good = sample_image();
    let n = good.len();
    let img = ImageFile::from_bytes(&good).unwrap();
    let meta_at = img.footer.metadata_offset as usize;

    // Header: a field byte, then the CRC itself, then a reserved byte.
    for at in [12usize, 61, 30] {
        let mut b = good.clone();
        b[at] ^= 0x04;
        let e = open_err(&b);
        assert!(
            matches!(&e, ReadError::BadCrc { what } if what == "header"),
            "byte {at}: {e}"
        );
    }
    // Footer: the metadata offset, the encoding, the CRC.
    for at in [8usize, 28, 62] {
        let mut b = good.clone();
        b[n - FOOTER_LEN + at] ^= 0x10;
        let e = open_err(&b);
        assert!(
            matches!(&e, ReadError::BadCrc { what } if what == "footer"),
            "footer byte {at}: {e}"
        );
    }
    // Metadata: first, middle and last byte.
    for at in [meta_at, (meta_at + n - FOOTER_LEN) / 2, n - FOOTER_LEN - 1] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        let e = open_err(&b);
        assert!(
            matches!(&e, ReadError::BadCrc { what } if what.starts_with("metadata")),
            "metadata byte {at}: {e}"
        );
        assert!(
            e.to_string().contains(&format!("file offset {meta_at}")),
            "{e}"
        );
    }
    // Chunks: the image opens (chunks are checked as they are read); the damaged chunk is
    // refused by name and file offset, the others still read.
    for (ci, c) in img.metadata.chunks.iter().enumerate() {
        for at in [c.offset, c.offset + c.stored_len - 1] {
            let mut b = good.clone();
            b[at as usize] ^= 0x80;
            let img = ImageFile::from_bytes(&b).unwrap();
            let mut scratch = Vec::new();
            for (cj, cc) in img.metadata.chunks.iter().enumerate() {
                let mut out = vec![0u8; cc.raw_len as usize];
                let r = img.read_chunk(cj, &mut scratch, &mut out);
                if cj == ci {
                    let e = r.unwrap_err();
                    let msg = e.to_string();
                    assert!(matches!(e, ReadError::BadCrc { .. }), "{msg}");
                    assert!(msg.contains(&format!("chunk {ci}")), "{msg}");
                    assert!(msg.contains(&format!("file offset {}", c.offset)), "{msg}");
                    assert!(img.read_chunk_stored(cj, &mut scratch).is_err());
                } else {
                    r.unwrap();
                }
            }
        }
    }
    // A chunk whose recorded CRC matches damaged zstd bytes: decompression fails cleanly.
    let b = rewrite_metadata(&good, |_| {});
    assert_eq!(b, good);
    let mut b2 = b.clone();
    let c0 = &img.metadata.chunks[0];
    for i in 0..c0.stored_len.min(16) {
        b2[(c0.offset + i) as usize] = 0xff;
    }
    let b2 = reseal(&b2);
    let img2 = ImageFile::from_bytes(&b2).unwrap();
    let e = img2.read_chunk_to_vec(0).unwrap_err();
    assert!(matches!(e, ReadError::Chunk { index: 0, .. }), "{e}");
}

#[test]
fn test_bad_version() {
    let good = sample_image();
    let newer_minor = rewrite_header(&good, |h| h.minor = FORMAT_MINOR + 1);
    let e = open_err(&newer_minor);
    assert!(
        matches!(e, ReadError::UnsupportedVersion { major: FORMAT_MAJOR, minor } if minor == FORMAT_MINOR + 1),
        "{e}"
    );
    assert!(e.to_string().contains("not supported"));
    for major in [0, FORMAT_MAJOR + 1, u16::MAX] {
        let b = rewrite_header(&good, |h| h.major = major);
        let e = open_err(&b);
        assert!(
            matches!(e, ReadError::UnsupportedVersion { major: m, .. } if m == major),
            "{e}"
        );
    }
    // The current version (and so every older minor of this major) is read.
    let same = rewrite_header(&good, |h| h.minor = FORMAT_MINOR);
    ImageFile::from_bytes(&same).unwrap();
    // Flags: the incremental flag on an image older than 1.3, and unknown ones, are refused.
    for flags in [FLAG_INCREMENTAL, 2, 0x8000_0000] {
        let b = rewrite_header(&good, |h| h.flags = flags);
        assert!(matches!(open_err(&b), ReadError::UnsupportedFlags(f) if f == flags));
    }
    // A 1.3 header that says incremental over metadata naming no parent is refused.
    let b = rewrite_header(&good, |h| {
        h.minor = 3;
        h.flags = FLAG_INCREMENTAL
    });
    let e = open_err(&b);
    assert!(e.to_string().contains("names no parent"), "{e}");
    let b = rewrite_header(&good, |h| h.page_size = 2 * PAGE_SIZE);
    assert!(matches!(open_err(&b), ReadError::BadPageSize(p) if p == 2 * PAGE_SIZE));
}

#[test]
fn test_truncated() {
    let good = sample_image();
    let n = good.len();
    let img = ImageFile::from_bytes(&good).unwrap();
    let meta_at = img.footer.metadata_offset as usize;
    let min = FIRST_CHUNK_OFFSET as usize + FOOTER_LEN;
    // Every length, from empty to one byte short: inside the header, inside the header's
    // padding, inside each chunk, inside the metadata, inside the footer.
    for len in 0..n {
        let e = open_err(&good[..len]);
        if len < min {
            assert!(
                matches!(e, ReadError::TooShort { len: l } if l == len as u64),
                "{len}: {e}"
            );
        } else {
            // The last 64 bytes are not the footer: its magic or CRC fails (or, by chance,
            // the length it records does).
            assert!(
                matches!(
                    e,
                    ReadError::BadMagic { .. }
                        | ReadError::BadCrc { .. }
                        | ReadError::Truncated { .. }
                ),
                "{len}: {e}"
            );
        }
    }
    // Cut short with the footer kept (the write stopped mid-chunk, footer appended): the
    // footer's file length gives it away.
    for cut in [1usize, PAGE, n - meta_at - FOOTER_LEN] {
        let mut b = good[..n - FOOTER_LEN - cut].to_vec();
        b.extend_from_slice(&good[n - FOOTER_LEN..]);
        let e = open_err(&b);
        assert!(
            matches!(e, ReadError::Truncated { expected, actual } if expected == n as u64 && actual == b.len() as u64),
            "{e}"
        );
    }
    // Truncated files, through the file reader too.
    let dir = std::env::temp_dir().join(format!("fpk-trunc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for len in [0, HEADER_LEN - 1, min - 1, meta_at + 1, n - 1] {
        let p = dir.join(format!("t{len}.fpk"));
        std::fs::write(&p, &good[..len]).unwrap();
        assert!(ImageFile::open(&p).is_err(), "{len}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn test_trailing_bytes() {
    let good = sample_image();
    for extra in [1usize, 63, 64, PAGE] {
        let mut b = good.clone();
        b.resize(good.len() + extra, 0);
        let e = open_err(&b);
        assert!(matches!(e, ReadError::BadMagic { .. }), "{extra}: {e}");
    }
    // Bytes appended, then the footer copied after them: its recorded length disagrees.
    let mut b = good.clone();
    b.extend_from_slice(&[0u8; 100]);
    b.extend_from_slice(&good[good.len() - FOOTER_LEN..]);
    let e = open_err(&b);
    assert!(
        matches!(e, ReadError::Truncated { expected, actual } if expected == good.len() as u64 && actual == b.len() as u64),
        "{e}"
    );
    assert!(e.to_string().contains("trailing bytes"));
}

#[test]
fn test_overlapping_mappings() {
    let good = sample_image();
    let b = rewrite_metadata(&good, |m| {
        m.mappings[1].start = m.mappings[0].end - PAGE_SIZE
    });
    assert_invalid(&b, &["mapping 1", "0x1000f000", "overlaps", "0x10010000"]);
    // Out of order.
    let b = rewrite_metadata(&good, |m| m.mappings.swap(0, 1));
    assert_invalid(&b, &["mapping 1", "out of order"]);
    // Same start twice.
    let b = rewrite_metadata(&good, |m| {
        let mut dup = m.mappings[1].clone();
        dup.end = dup.start + PAGE_SIZE;
        m.mappings.insert(2, dup);
    });
    assert_invalid(&b, &["mapping 2", "overlaps"]);
    // Not page-aligned, empty, reversed, beyond user space.
    type MapEdit = fn(&mut Mapping);
    let cases: [(MapEdit, &str); 5] = [
        (|m| m.start += 1, "not page-aligned"),
        (|m| m.end = m.start, "empty"),
        (|m| std::mem::swap(&mut m.start, &mut m.end), "empty"),
        (|m| m.end = 0x8000_0000_0000, "outside user space"),
        (|m| m.prot = 8, "protection"),
    ];
    for (f, word) in cases {
        let b = rewrite_metadata(&good, |m| f(&mut m.mappings[2]));
        assert_invalid(&b, &["mapping 2", word]);
    }
}

#[test]
fn test_run_outside_mapping() {
    let meta = sample_metadata();
    let one = pattern(5, 1);
    // No mapping there; a mapping whose contents are not stored; straddling a mapping's end.
    for (addr, npages) in [
        (0x3000_0000u64, 1usize),
        (0x2000_0000, 1),
        (ANON + 15 * PAGE_SIZE, 2),
        (ANON - PAGE_SIZE, 2),
    ] {
        let mut b = ImageBuilder::new(meta.clone());
        b.pages(ANON, &one).end_chunk();
        b.pages(addr, &pattern(6, npages));
        assert_invalid(
            &b.build(),
            &[
                "not inside a mapping with stored contents",
                "chunk 1",
                &format!("{addr:#x}"),
            ],
        );
    }
    // A run that does not fit in user space, or wraps.
    let good = sample_image();
    for (addr, pages) in [
        (0x7fff_ffff_f000u64, 1u64),
        (u64::MAX - PAGE_SIZE + 1, 2),
        (ANON + 1, 1),
        (ANON, 0),
    ] {
        let b = rewrite_metadata(&good, |m| m.chunks[0].runs[0] = PageRun { addr, pages });
        assert_invalid(&b, &["chunk 0", "invalid page run"]);
    }
    // Runs and raw length disagree.
    let b = rewrite_metadata(&good, |m| m.chunks[0].runs[0].pages -= 1);
    assert_invalid(&b, &["chunk 0", "raw length"]);
}

#[test]
fn test_page_stored_twice() {
    let meta = sample_metadata();
    // The same page in two chunks.
    let mut b = ImageBuilder::new(meta.clone());
    b.pages(ANON, &pattern(1, 2)).end_chunk();
    b.pages(ANON + PAGE_SIZE, &pattern(2, 1));
    assert_invalid(&b.build(), &["stored twice", "0x10001000"]);
    // Twice in one chunk (two runs).
    let mut b = ImageBuilder::new(meta);
    b.pages(ANON, &pattern(1, 3));
    b.pages(ANON, &pattern(2, 1));
    assert_invalid(&b.build(), &["stored twice", "0x10000000", "chunk 0"]);
}

#[test]
fn test_chunk_outside_file() {
    let good = sample_image();
    let img = ImageFile::from_bytes(&good).unwrap();
    let meta_at = img.footer.metadata_offset;
    type ChunkEdit = fn(&mut Metadata, u64);
    let cases: [(ChunkEdit, &[&str]); 7] = [
        // Past the end of the file.
        (
            |m, _| m.chunks[2].offset = 1 << 40,
            &["chunk 2", "outside the chunk area"],
        ),
        // Offset + length overflows.
        (
            |m, _| m.chunks[2].offset = u64::MAX - 1,
            &["chunk 2", "outside"],
        ),
        // Runs into the metadata.
        (
            |m, at| m.chunks[2].offset = at - PAGE_SIZE + 1,
            &["chunk 2", "outside"],
        ),
        // Over the header.
        (|m, _| m.chunks[0].offset = 0, &["chunk 0", "header"]),
        // Over the previous chunk.
        (
            |m, _| m.chunks[1].offset = m.chunks[0].offset + 1,
            &["chunk 1", "overlaps"],
        ),
        // A stored chunk whose length is not its raw length.
        (
            |m, _| m.chunks[2].stored_len -= 1,
            &["chunk 2", "raw length"],
        ),
        // A stored chunk not page-aligned in the file.
        (
            |m, _| m.chunks[2].offset -= 64,
            &["chunk 2", "not page-aligned"],
        ),
    ];
    for (f, words) in cases {
        let b = rewrite_metadata(&good, |m| f(m, meta_at));
        assert_invalid(&b, words);
    }
    // A zstd chunk longer than zstd could ever make it, or empty.
    let b = rewrite_metadata(&good, |m| m.chunks[0].stored_len = 0);
    assert_invalid(&b, &["zstd chunk 0", "file offset 4096"]);
    let b = rewrite_metadata(&good, |m| {
        m.chunks[0].raw_len = PAGE_SIZE;
        m.chunks[0].runs = vec![PageRun {
            addr: ANON,
            pages: 1,
        }];
        m.chunks[0].stored_len = 2 * PAGE_SIZE;
        m.chunks[1].offset = 4 * PAGE_SIZE;
    });
    assert_invalid(&b, &["zstd chunk 0"]);
    // Raw length limits.
    for raw in [
        0,
        PAGE_SIZE + 1,
        forkpoint_image::MAX_CHUNK_RAW_LEN + PAGE_SIZE,
    ] {
        let b = rewrite_metadata(&good, |m| m.chunks[0].raw_len = raw);
        assert_invalid(&b, &["chunk 0", "raw length"]);
    }
    // The footer pointing the metadata elsewhere is refused before any of this.
    let n = good.len() as u64;
    for (off, len) in [
        (0u64, 10u64),
        (meta_at + 1, n - meta_at),
        (meta_at, u64::MAX),
    ] {
        let mut b = good.clone();
        let at = good.len() - FOOTER_LEN;
        b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&len.to_le_bytes());
        let crc = forkpoint_image::crc32(&b[at..at + 60]);
        b[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(open_err(&b), ReadError::BadFooter(_)),
            "{off}+{len}"
        );
    }
}

#[test]
fn test_metadata_checks() {
    let good = sample_image();
    ImageFile::from_bytes(&good).unwrap();
    type Edit = fn(&mut Metadata);
    let cases: Vec<(Edit, &[&str])> = vec![
        (|m| m.threads.clear(), &["0 threads"]),
        (|m| m.threads[0].tid = 0, &["thread 0", "tid"]),
        (
            |m| m.threads.push(m.threads[0].clone()),
            &["tid 4242", "two threads"],
        ),
        (|m| m.threads[0].regs.rsp = 0, &["thread 0", "rsp"]),
        (
            |m| m.threads[0].regs.rip = 0xffff_ffff_8100_0000,
            &["thread 0", "rip 0xffffffff81000000"],
        ),
        (
            |m| m.threads[0].fs_base = u64::MAX,
            &["thread 0", "fs_base"],
        ),
        (
            |m| m.threads[0].robust_list = 1 << 63,
            &["thread 0", "robust_list"],
        ),
        (
            |m| m.threads[0].sigaltstack.size = u64::MAX,
            &["thread 0", "sigaltstack"],
        ),
        (
            |m| {
                m.threads[0].rseq = Some(Rseq {
                    addr: 0,
                    len: 32,
                    sig: 0x53053053,
                })
            },
            &["thread 0", "rseq"],
        ),
        (
            |m| m.fds = vec![fd(-1)],
            &["descriptor entry 0", "negative"],
        ),
        (
            |m| m.fds = vec![fd(0), fd(2), fd(1)],
            &["descriptor entry 2", "out of order"],
        ),
        (
            |m| m.fds = vec![fd(0), fd(0)],
            &["descriptor entry 1", "duplicate"],
        ),
        (
            |m| m.signals = vec![sig(0)],
            &["signal entry 0", "signal number 0"],
        ),
        (|m| m.signals = vec![sig(65)], &["signal number 65"]),
        (
            |m| m.signals = vec![sig(1), sig(9)],
            &["signal entry 1", "SIGKILL"],
        ),
        (|m| m.signals = vec![sig(19)], &["SIGSTOP"]),
        (
            |m| m.signals = vec![sig(2), sig(2)],
            &["signal 2 appears twice"],
        ),
        (
            |m| {
                m.signals = vec![SigAction {
                    handler: 1 << 63,
                    ..sig(10)
                }]
            },
            &["signal 10", "handler"],
        ),
        (
            |m| m.rlimits = vec![rlim(16)],
            &["limit entry 0", "resource 16"],
        ),
        (
            |m| m.rlimits = vec![rlim(3), rlim(3)],
            &["resource 3 appears twice"],
        ),
        (
            |m| {
                m.rlimits = vec![Rlimit {
                    resource: 7,
                    cur: 2,
                    max: 1,
                }]
            },
            &["resource 7", "soft limit"],
        ),
        (|m| m.mm.brk = 1 << 48, &["mm.brk"]),
        (
            |m| {
                m.mm.start_brk = 0x5000;
                m.mm.brk = 0x4000
            },
            &["mm.start_brk", "mm.brk"],
        ),
        (|m| m.mm.auxv = vec![6, 4096, 0], &["mm.auxv", "3 words"]),
        (|m| m.mm.auxv = vec![0; 1024], &["mm.auxv"]),
        (
            |m| m.library.restore_info_addr = 0x1000_0004,
            &["restore_info_addr"],
        ),
        (
            |m| m.library.restore_info_addr = 0x7fff_ffff_eff0,
            &["restore_info_addr"],
        ),
        (|m| m.cpu.xsave_frame_size = u32::MAX, &["xsave_frame_size"]),
        (
            |m| m.mappings[0].kind = MappingKind::SharedAnonymous,
            &["mapping 0", "shared_anonymous", "shared = false"],
        ),
        (
            |m| m.mappings[0].kind = MappingKind::Vdso { crc32: 0 },
            &["mapping 0", "vdso", "stored contents"],
        ),
        (
            |m| {
                m.mappings[0].kind = MappingKind::SharedFile {
                    file: FileId::default(),
                }
            },
            &["mapping 0", "shared_file"],
        ),
        (
            |m| {
                m.mappings.push(Mapping {
                    start: 0xffff_ffff_ff60_0000,
                    end: 0xffff_ffff_ff60_1000,
                    prot: 4,
                    shared: false,
                    offset: 0,
                    name: "[vsyscall]".into(),
                    kind: MappingKind::Anonymous,
                    contents: Contents::NotStored,
                    approximation: None,
                    memory_object: None,
                })
            },
            &["mapping 3", "outside user space"],
        ),
    ];
    for (i, (f, words)) in cases.into_iter().enumerate() {
        let b = rewrite_metadata(&good, f);
        match ImageFile::from_bytes(&b) {
            Ok(_) => panic!("case {i} ({words:?}) was accepted"),
            Err(ReadError::Invalid(e)) => {
                for w in words {
                    assert!(
                        e.0.contains(w),
                        "case {i}: {:?} does not mention {w:?}",
                        e.0
                    );
                }
            }
            Err(e) => panic!("case {i}: expected a validation error, got {e}"),
        }
    }

    // And what is fine: a full, plausible metadata.
    let b = rewrite_metadata(&good, |m| {
        m.fds = vec![fd(0), fd(1), fd(2), fd(7)];
        m.signals = (1..=64).filter(|&s| s != 9 && s != 19).map(sig).collect();
        m.rlimits = (0..16).map(rlim).collect();
        m.mm.auxv = vec![6, 4096, 0, 0];
        m.mm.start_brk = 0x5555_0000;
        m.mm.brk = 0x5556_0000;
        m.library.restore_info_addr = ANON + 0x100;
        m.threads[0].rseq = Some(Rseq {
            addr: ANON + 0x200,
            len: 32,
            sig: 0x5305_3053,
        });
        m.threads.push(forkpoint_image::ThreadState {
            tid: 4243,
            ..m.threads[0].clone()
        });
        m.mappings.push(Mapping {
            start: 0xffff_ffff_ff60_0000,
            end: 0xffff_ffff_ff60_1000,
            prot: 4,
            shared: false,
            offset: 0,
            name: "[vsyscall]".into(),
            kind: MappingKind::Vsyscall,
            contents: Contents::NotStored,
            approximation: None,
            memory_object: None,
        });
    });
    ImageFile::from_bytes(&b).unwrap();
}

fn fd(n: i32) -> FdEntry {
    FdEntry {
        fd: n,
        flags: 2,
        cloexec: false,
        offset: 0,
        path: "/dev/pts/0".into(),
        kind: FdKind::Tty { rdev: 0x8800 },
        restore: FdRestore::Inherit,
    }
}

fn sig(signo: u32) -> SigAction {
    SigAction {
        signo,
        handler: 0,
        flags: 0x0400_0000,
        restorer: 0x2000_0200,
        mask: 0,
    }
}

fn rlim(resource: u32) -> Rlimit {
    Rlimit {
        resource,
        cur: 1024,
        max: u64::MAX,
    }
}

#[test]
fn test_metadata_not_json() {
    let good = sample_image();
    for f in [
        (|m: &mut Vec<u8>| m.truncate(m.len() / 2)) as fn(&mut Vec<u8>),
        |m| m.clear(),
        |m| {
            // Nested arrays past serde_json's recursion limit.
            m.clear();
            m.extend(vec![b'['; 100_000]);
        },
        |m| *m = br#"{"process": 5}"#.to_vec(),
        |m| {
            // An unknown enum tag.
            let s = String::from_utf8(m.clone()).unwrap();
            *m = s.replace("\"anonymous\"", "\"teleported\"").into_bytes();
        },
        |m| {
            // A negative address.
            let s = String::from_utf8(m.clone()).unwrap();
            *m = s.replacen("\"start\":", "\"start\":-", 1).into_bytes();
        },
        |m| {
            // A number too large for u64.
            let s = String::from_utf8(m.clone()).unwrap();
            *m = s
                .replacen("\"start\":", "\"start\":99999999999999999999", 1)
                .into_bytes();
        },
    ] {
        let b = replace_metadata_bytes(&good, f);
        let e = open_err(&b);
        assert!(matches!(e, ReadError::Metadata(_)), "{e}");
    }
}

/// Replaces the raw metadata bytes and reseals.
fn replace_metadata_bytes(good: &[u8], f: fn(&mut Vec<u8>)) -> Vec<u8> {
    let img = ImageFile::from_bytes(good).unwrap();
    let at = img.footer.metadata_offset as usize;
    let mut m = good[at..good.len() - FOOTER_LEN].to_vec();
    f(&mut m);
    let mut b = good[..at].to_vec();
    b.extend_from_slice(&m);
    b.extend_from_slice(
        &forkpoint_image::Footer {
            metadata_offset: at as u64,
            metadata_len: m.len() as u64,
            metadata_crc32: forkpoint_image::crc32(&m),
            metadata_encoding: forkpoint_image::METADATA_ENCODING_JSON,
            file_len: (b.len() + FOOTER_LEN) as u64,
        }
        .encode(),
    );
    b
}

#[test]
fn test_reseal_restores_a_valid_image() {
    let good = sample_image();
    assert_eq!(reseal(&good), good);
    let mut b = good.clone();
    b[61] ^= 1; // header CRC
    let n = b.len();
    b[n - 3] ^= 1; // footer CRC
    let c = ImageFile::from_bytes(&good).unwrap().metadata.chunks[1].clone();
    b[c.offset as usize + 5] ^= 1; // chunk 1 damaged, its CRC will be recomputed
    let r = reseal(&b);
    let img = ImageFile::from_bytes(&r).unwrap();
    assert!(img.read_chunk_to_vec(0).is_ok());
    assert!(matches!(
        img.read_chunk_to_vec(1),
        Err(ReadError::Chunk { index: 1, .. })
    ));
    // Never panics on short or odd input.
    for len in 0..200 {
        let _ = reseal(&good[..len]);
    }
}

/// The JSON names and enum tags are a contract with the writer and the loader: check the
/// serialized form of each enum.
#[test]
fn test_serialized_names() {
    let mut m = sample_metadata();
    m.fds = vec![
        FdEntry {
            kind: FdKind::Regular {
                file: FileId::default(),
            },
            restore: FdRestore::Reopen,
            ..fd(3)
        },
        FdEntry {
            kind: FdKind::Socket { socket: None },
            restore: FdRestore::DevNull {
                reason: "connected TCP socket".into(),
            },
            ..fd(4)
        },
        fd(5),
    ];
    let bytes = {
        let mut b = ImageBuilder::new(m);
        b.pages(ANON, &pattern(0, 1));
        b.compression(Compression::None)
            .pages(ANON + PAGE_SIZE, &pattern(0, 1));
        b.build()
    };
    let img = ImageFile::from_bytes(&bytes).unwrap();
    let at = img.footer.metadata_offset as usize;
    let json = std::str::from_utf8(&bytes[at..bytes.len() - FOOTER_LEN]).unwrap();
    if std::env::var_os("FPK_PRINT_JSON").is_some() {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    }
    for s in [
        r#""kind":{"kind":"anonymous"}"#,
        r#""contents":"stored""#,
        r#""contents":"not_stored""#,
        r#""kind":{"kind":"file","file":{"path":"/usr/lib/libexample.so""#,
        r#""kind":{"kind":"stack"}"#,
        r#""compression":"zstd""#,
        r#""compression":"none""#,
        r#""kind":{"kind":"tty","rdev":34816}"#,
        r#""restore":{"how":"inherit"}"#,
        r#""restore":{"how":"reopen"}"#,
        r#""restore":{"how":"dev_null","reason":"connected TCP socket"}"#,
        r#""rseq":null"#,
        r#""runs":[{"addr":268435456,"pages":1}]"#,
    ] {
        assert!(json.contains(s), "{s} not in {json}");
    }
    let tags = [
        (
            MappingKind::SharedAnonymous,
            r#"{"kind":"shared_anonymous"}"#,
        ),
        (
            MappingKind::Vdso { crc32: 7 },
            r#"{"kind":"vdso","crc32":7}"#,
        ),
        (MappingKind::Vvar, r#"{"kind":"vvar"}"#),
        (MappingKind::VvarVclock, r#"{"kind":"vvar_vclock"}"#),
        (MappingKind::Vsyscall, r#"{"kind":"vsyscall"}"#),
        (MappingKind::Heap, r#"{"kind":"heap"}"#),
    ];
    for (k, s) in tags {
        assert_eq!(serde_json::to_string(&k).unwrap(), s);
    }
    assert_eq!(
        serde_json::to_string(&Contents::Empty).unwrap(),
        r#""empty""#
    );
    for (k, s) in [
        (FdKind::Directory, r#"{"kind":"directory"}"#),
        (
            FdKind::CharDevice { rdev: 3 },
            r#"{"kind":"char_device","rdev":3}"#,
        ),
        (
            FdKind::Pipe { pipe: None },
            r#"{"kind":"pipe","pipe":null}"#,
        ),
        (
            FdKind::Eventfd {
                count: 42,
                semaphore: true,
            },
            r#"{"kind":"eventfd","count":42,"semaphore":true}"#,
        ),
        (FdKind::Other, r#"{"kind":"other"}"#),
    ] {
        assert_eq!(serde_json::to_string(&k).unwrap(), s);
    }
    // A missing optional rseq reads as none; other missing fields are errors.
    let v = json.replace(r#","rseq":null"#, "");
    let m: Metadata = serde_json::from_str(&v).unwrap();
    assert_eq!(m.threads[0].rseq, None);
    assert!(serde_json::from_str::<Metadata>(&json.replace(r#""tid":4242,"#, "")).is_err());
}

#[test]
fn test_crc32_is_ieee() {
    // CRC-32/IEEE (zlib) check value, as docs/image-format.md specifies.
    assert_eq!(forkpoint_image::crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(forkpoint_image::crc32(b""), 0);
}

/// A tree's members: the root first at offset 0, the others page-aligned past the root's
/// data and apart from each other, each parent before its children.
#[test]
fn tree_members_are_validated() {
    use forkpoint_image::{validate_metadata, TreeInfo, TreeMember};
    let member = |pid, ppid, image_offset, image_len| TreeMember {
        pid,
        ppid,
        image_offset,
        image_len,
        ..Default::default()
    };
    let mut meta = sample_metadata();
    let root = meta.process.pid;
    let end = 1 << 20;
    let check = |meta: &mut forkpoint_image::Metadata, members: Vec<TreeMember>| {
        meta.tree = Some(TreeInfo {
            members,
            ..Default::default()
        });
        validate_metadata(meta, end).map_err(|e| e.to_string())
    };
    assert!(check(&mut meta, vec![member(root, 1, 0, 0)]).is_ok());
    assert!(check(
        &mut meta,
        vec![member(root, 1, 0, 0), member(5000, root, 0x80000, 0x10000)]
    )
    .is_ok());
    let zombie = |pid, ppid| TreeMember {
        exited: Some(7 << 8),
        ..member(pid, ppid, 0, 0)
    };
    assert!(check(&mut meta, vec![member(root, 1, 0, 0), zombie(5000, root)]).is_ok());
    let bad = [
        (
            vec![
                member(root, 1, 0, 0),
                zombie(5000, root),
                zombie(5001, 5000),
            ],
            "exited but has children",
        ),
        (
            vec![
                member(root, 1, 0, 0),
                TreeMember {
                    exited: Some(0),
                    ..member(5000, root, 0x80000, 0x10000)
                },
            ],
            "exited but has an image",
        ),
        (
            vec![TreeMember {
                exited: Some(0),
                ..member(root, 1, 0, 0)
            }],
            "not this image's process",
        ),
        (vec![member(root + 1, 1, 0, 0)], "not this image's process"),
        (
            vec![member(root, 1, 0, 0), member(5000, 4999, 0x80000, 0x10000)],
            "not an earlier member",
        ),
        (
            vec![member(root, 1, 0, 0), member(5000, root, 0x80001, 0x10000)],
            "outside the data area",
        ),
        (
            vec![member(root, 1, 0, 0), member(5000, root, 0xf8000, 0x10000)],
            "outside the data area",
        ),
        (
            vec![
                member(root, 1, 0, 0),
                member(5000, root, 0x80000, 0x10000),
                member(5001, root, 0x88000, 0x10000),
            ],
            "overlap",
        ),
        (
            vec![member(root, 1, 0, 0), member(root, root, 0x80000, 0x10000)],
            "repeated",
        ),
    ];
    for (members, why) in bad {
        let e = check(&mut meta, members.clone()).unwrap_err();
        assert!(e.contains(why), "{members:?}: {e}");
    }
    // Shared open file descriptions: two or more descriptors of living members.
    use forkpoint_image::MemberFd;
    let two = vec![member(root, 1, 0, 0), member(5000, root, 0x80000, 0x10000)];
    let shared = |meta: &mut forkpoint_image::Metadata, groups: Vec<Vec<MemberFd>>| {
        meta.tree = Some(TreeInfo {
            members: two.clone(),
            shared_files: groups,
        });
        validate_metadata(meta, end).map_err(|e| e.to_string())
    };
    let fd = |pid, fd| MemberFd { pid, fd };
    assert!(shared(&mut meta, vec![vec![fd(root, 1), fd(5000, 1)]]).is_ok());
    for (groups, why) in [
        (vec![vec![fd(root, 1)]], "1 descriptors"),
        (
            vec![vec![fd(root, 1), fd(4999, 1)]],
            "not a living member's",
        ),
        (
            vec![vec![fd(root, 1), fd(5000, -1)]],
            "not a living member's",
        ),
    ] {
        let e = shared(&mut meta, groups.clone()).unwrap_err();
        assert!(e.contains(why), "{groups:?}: {e}");
    }
}
