//! Writes the seed images the fuzz targets start from (see `fuzz/README.md`):
//!
//!     cargo run -p forkpoint-image --example gen_fuzz_seeds -- fuzz/seeds
//!
//! Small valid images covering each part of the format: zstd and stored chunks, several
//! runs per chunk, no chunks at all, every metadata list filled, every mapping kind.
//! (Named `*.seed`, not `*.fpk`, which the repository ignores.)

use std::path::PathBuf;

use forkpoint_image::build::{sample_metadata, ImageBuilder};
use forkpoint_image::{
    Compression, Contents, FdEntry, FdKind, FdRestore, FileId, ImageFile, Mapping, MappingKind,
    Rlimit, Rseq, SigAction, PAGE_SIZE,
};

fn page(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE as u32)
        .map(|i| ((i / 11) as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    std::fs::create_dir_all(&dir).expect("cannot create the seed directory");
    let base = sample_metadata().mappings[0].start;
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    // One zstd chunk of one page.
    let mut b = ImageBuilder::new(sample_metadata());
    b.pages(base, &page(1));
    seeds.push(("one-page", b.build()));

    // No chunks at all.
    seeds.push(("no-chunks", ImageBuilder::new(sample_metadata()).build()));

    // Several small chunks, two runs in one, then a stored (page-aligned) chunk.
    let mut b = ImageBuilder::new(sample_metadata());
    b.chunk_size(2 * PAGE_SIZE);
    b.pages(base, &page(2))
        .pages(base + 3 * PAGE_SIZE, &page(3))
        .pages(base + 4 * PAGE_SIZE, &page(4));
    b.compression(Compression::None);
    b.pages(base + 8 * PAGE_SIZE, &[page(5), page(6)].concat());
    seeds.push(("chunks", b.build()));

    // Every list filled, every mapping kind.
    let mut m = sample_metadata();
    let file = FileId {
        path: "/var/data.bin".into(),
        dev: 0x803,
        inode: 77,
        size: 8192,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 5,
    };
    let mut extra = vec![
        (MappingKind::Heap, false, Contents::Stored, "[heap]"),
        (
            MappingKind::SharedFile { file: file.clone() },
            true,
            Contents::NotStored,
            "/var/data.bin",
        ),
        (
            MappingKind::SharedAnonymous,
            true,
            Contents::Stored,
            "/dev/zero (deleted)",
        ),
        (MappingKind::Anonymous, false, Contents::Empty, ""),
        (MappingKind::Vvar, false, Contents::NotStored, "[vvar]"),
        (
            MappingKind::VvarVclock,
            false,
            Contents::NotStored,
            "[vvar_vclock]",
        ),
        (
            MappingKind::Vdso { crc32: 0x1234_5678 },
            false,
            Contents::NotStored,
            "[vdso]",
        ),
    ];
    let mut at = 0x3000_0000u64;
    for (kind, shared, contents, name) in extra.drain(..) {
        m.mappings.push(Mapping {
            start: at,
            end: at + 2 * PAGE_SIZE,
            prot: 3,
            shared,
            offset: 0,
            name: name.into(),
            kind,
            contents,
            approximation: None,
            memory_object: None,
        });
        at += 0x10_0000;
    }
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
    m.mappings.sort_by_key(|x| x.start);
    m.fds = vec![
        FdEntry {
            fd: 0,
            flags: 2,
            cloexec: false,
            offset: 0,
            path: "/dev/pts/0".into(),
            kind: FdKind::Tty { rdev: 0x8800 },
            restore: FdRestore::Inherit,
        },
        FdEntry {
            fd: 3,
            flags: 0o2001,
            cloexec: true,
            offset: 1234,
            path: "/var/log.txt".into(),
            kind: FdKind::Regular { file },
            restore: FdRestore::Reopen,
        },
        FdEntry {
            fd: 4,
            flags: 2,
            cloexec: false,
            offset: -1,
            path: "socket:[999]".into(),
            kind: FdKind::Socket { socket: None },
            restore: FdRestore::DevNull {
                reason: "connected TCP socket".into(),
            },
        },
    ];
    m.signals = vec![SigAction {
        signo: 2,
        handler: 0x2000_0100,
        flags: 0x0400_0000,
        restorer: 0x2000_0200,
        mask: 1 << 14,
    }];
    m.rlimits = vec![Rlimit {
        resource: 7,
        cur: 1024,
        max: 524_288,
    }];
    m.mm.auxv = vec![6, 4096, 0, 0];
    m.mm.start_brk = 0x3000_0000;
    m.mm.brk = 0x3000_2000;
    m.library.restore_info_addr = base + 0x100;
    m.threads[0].rseq = Some(Rseq {
        addr: base + 0x200,
        len: 32,
        sig: 0x5305_3053,
    });
    m.warnings = vec!["mapping 0x1-0x2: an example warning".into()];
    let mut b = ImageBuilder::new(m);
    b.pages(base, &page(7)).pages(0x3000_0000, &page(8));
    seeds.push(("full-metadata", b.build()));

    for (name, bytes) in &seeds {
        ImageFile::from_bytes(bytes).expect("seed images are valid");
        let path = dir.join(format!("{name}.seed"));
        std::fs::write(&path, bytes).expect("cannot write a seed");
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
