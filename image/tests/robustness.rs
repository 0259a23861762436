//! Property tests (metadata, header and footer survive encode/decode; built images read
//! back the pages put in) and a deterministic mini-fuzzer: thousands of random and mutated
//! images go through the reader, which may refuse them but must never panic.

use std::collections::BTreeMap;

use forkpoint_image::build::{reseal, sample_metadata, ImageBuilder};
use forkpoint_image::*;
use proptest::prelude::*;

// ---------------------------------------------------------------- strategies

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter)
}

fn file_id() -> impl Strategy<Value = FileId> {
    (
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
    )
        .prop_map(|(path, dev, inode, size, mtime_sec, mtime_nsec)| FileId {
            path,
            dev,
            inode,
            size,
            mtime_sec,
            mtime_nsec,
        })
}

fn mapping_kind() -> impl Strategy<Value = MappingKind> {
    prop_oneof![
        Just(MappingKind::Anonymous),
        Just(MappingKind::Heap),
        Just(MappingKind::Stack),
        file_id().prop_map(|file| MappingKind::File { file }),
        file_id().prop_map(|file| MappingKind::SharedFile { file }),
        Just(MappingKind::SharedAnonymous),
        any::<u32>().prop_map(|crc32| MappingKind::Vdso { crc32 }),
        Just(MappingKind::Vvar),
        Just(MappingKind::VvarVclock),
        Just(MappingKind::Vsyscall),
    ]
}

fn contents() -> impl Strategy<Value = Contents> {
    prop_oneof![
        Just(Contents::Stored),
        Just(Contents::NotStored),
        Just(Contents::Empty)
    ]
}

fn mapping() -> impl Strategy<Value = Mapping> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        any::<u64>(),
        text(),
        mapping_kind(),
        contents(),
    )
        .prop_map(
            |(start, end, prot, shared, offset, name, kind, contents)| Mapping {
                start,
                end,
                prot,
                shared,
                offset,
                name,
                kind,
                contents,
                approximation: None,
                memory_object: None,
            },
        )
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(Compression::Zstd), Just(Compression::None)],
        any::<u32>(),
        proptest::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(addr, pages)| PageRun { addr, pages }),
            0..4,
        ),
    )
        .prop_map(
            |(offset, stored_len, raw_len, compression, crc32, runs)| Chunk {
                offset,
                stored_len,
                raw_len,
                compression,
                crc32,
                runs,
            },
        )
}

fn fd_entry() -> impl Strategy<Value = FdEntry> {
    let kind = prop_oneof![
        file_id().prop_map(|file| FdKind::Regular { file }),
        Just(FdKind::Directory),
        any::<u64>().prop_map(|rdev| FdKind::CharDevice { rdev }),
        any::<u64>().prop_map(|rdev| FdKind::Tty { rdev }),
        Just(FdKind::Pipe { pipe: None }),
        Just(FdKind::Socket { socket: None }),
        Just(FdKind::Eventfd {
            count: 7,
            semaphore: false
        }),
        Just(FdKind::Other),
    ];
    let restore = prop_oneof![
        Just(FdRestore::Reopen),
        Just(FdRestore::Inherit),
        text().prop_map(|reason| FdRestore::DevNull { reason }),
    ];
    (
        any::<i32>(),
        any::<i32>(),
        any::<bool>(),
        any::<i64>(),
        text(),
        kind,
        restore,
    )
        .prop_map(
            |(fd, flags, cloexec, offset, path, kind, restore)| FdEntry {
                fd,
                flags,
                cloexec,
                offset,
                path,
                kind,
                restore,
            },
        )
}

fn thread() -> impl Strategy<Value = ThreadState> {
    (
        any::<i32>(),
        text(),
        any::<[u64; 8]>(),
        any::<u64>(),
        any::<u64>(),
        (any::<u64>(), any::<i32>(), any::<u64>()),
        any::<[u64; 3]>(),
        proptest::option::of((any::<u64>(), any::<u32>(), any::<u32>())),
    )
        .prop_map(
            |(tid, name, r, fs_base, sigmask, (sp, flags, size), [ta, rl, rll], rseq)| {
                ThreadState {
                    tid,
                    name,
                    regs: ResumeRegs {
                        rbx: r[0],
                        rbp: r[1],
                        r12: r[2],
                        r13: r[3],
                        r14: r[4],
                        r15: r[5],
                        rsp: r[6],
                        rip: r[7],
                    },
                    fs_base,
                    sigmask,
                    sigaltstack: AltStack { sp, flags, size },
                    tid_address: ta,
                    robust_list: rl,
                    robust_list_len: rll,
                    rseq: rseq.map(|(addr, len, sig)| Rseq { addr, len, sig }),
                    affinity: Vec::new(),
                    sched_policy: 0,
                    sched_priority: 0,
                }
            },
        )
}

fn process() -> impl Strategy<Value = ProcessInfo> {
    (
        text(),
        proptest::collection::vec(text(), 0..4),
        any::<[i32; 2]>(),
        any::<[u32; 5]>(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(exe, cmdline, [pid, ppid], [uid, gid, euid, egid, umask], cwd, hostname, kr)| {
                ProcessInfo {
                    exe,
                    cmdline,
                    pid,
                    ppid,
                    uid,
                    gid,
                    euid,
                    egid,
                    groups: vec![gid, uid],
                    cwd,
                    umask,
                    hostname,
                    kernel_release: kr,
                }
            },
        )
}

fn head() -> impl Strategy<Value = (ProcessInfo, CheckpointInfo, CpuInfo, LibraryInfo, MmFields)> {
    let checkpoint =
        (any::<[u64; 4]>(), text()).prop_map(|([seq, rid, t, g], trigger)| CheckpointInfo {
            seq,
            trigger,
            request_id: rid,
            time_unix_ns: t,
            generation: g,
        });
    let cpu = (text(), any::<[u32; 6]>(), any::<[u64; 2]>()).prop_map(|(vendor, c, x)| CpuInfo {
        vendor,
        cpuid_1_ecx: c[0],
        cpuid_1_edx: c[1],
        cpuid_7_ebx: c[2],
        cpuid_7_ecx: c[3],
        cpuid_7_edx: c[4],
        xcr0: x[0],
        xsave_required: x[1],
        xsave_frame_size: c[5],
    });
    let library = (text(), any::<u64>()).prop_map(|(version, restore_info_addr)| LibraryInfo {
        version,
        restore_info_addr,
        ..LibraryInfo::default()
    });
    let mm = (
        any::<[u64; 11]>(),
        proptest::collection::vec(any::<u64>(), 0..8),
    )
        .prop_map(|(a, auxv)| MmFields {
            start_code: a[0],
            end_code: a[1],
            start_data: a[2],
            end_data: a[3],
            start_brk: a[4],
            brk: a[5],
            start_stack: a[6],
            arg_start: a[7],
            arg_end: a[8],
            env_start: a[9],
            env_end: a[10],
            auxv,
        });
    (process(), checkpoint, cpu, library, mm)
}

fn metadata() -> impl Strategy<Value = Metadata> {
    let v = |n| 0..n;
    let sig = any::<(u32, [u64; 4])>().prop_map(|(signo, x)| SigAction {
        signo,
        handler: x[0],
        flags: x[1],
        restorer: x[2],
        mask: x[3],
    });
    let rl =
        any::<(u32, u64, u64)>().prop_map(|(resource, cur, max)| Rlimit { resource, cur, max });
    let stats = (any::<[u64; 9]>(), any::<i32>()).prop_map(|(s, zstd_level)| Stats {
        pages_mapped: s[0],
        pages_stored: s[1],
        pages_zero: s[2],
        pages_from_file: s[3],
        pages_untouched: s[4],
        bytes_raw: s[5],
        bytes_stored: s[6],
        pause_ns: s[7],
        write_ns: s[8],
        zstd_level,
        pages_inherited: 0,
    });
    (
        head(),
        proptest::collection::vec(thread(), v(3)),
        proptest::collection::vec(mapping(), v(5)),
        proptest::collection::vec(chunk(), v(4)),
        proptest::collection::vec(fd_entry(), v(4)),
        proptest::collection::vec(sig, v(4)),
        proptest::collection::vec(rl, v(4)),
        stats,
        (
            proptest::collection::vec(text(), v(3)),
            proptest::option::of(tree()),
        ),
    )
        .prop_map(
            |(
                (process, checkpoint, cpu, library, mm),
                threads,
                mappings,
                chunks,
                fds,
                signals,
                rlimits,
                stats,
                (warnings, tree),
            )| Metadata {
                process,
                checkpoint,
                cpu,
                library,
                mm,
                threads,
                mappings,
                chunks,
                fds,
                blobs: Vec::new(),
                attributes: Default::default(),
                timers: Default::default(),
                locks: Vec::new(),
                memory_advice: Vec::new(),
                signals,
                rlimits,
                stats,
                warnings,
                tree,
                parent: None,
                inherited: Vec::new(),
            },
        )
}

fn tree() -> impl Strategy<Value = TreeInfo> {
    let member = (
        any::<[i32; 4]>(),
        text(),
        proptest::collection::vec(text(), 0..2),
        any::<u32>(),
        any::<[u64; 3]>(),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(|(ids, exe, cmdline, threads, n, exited)| TreeMember {
            pid: ids[0],
            ppid: ids[1],
            pgid: ids[2],
            sid: ids[3],
            exe,
            cmdline,
            threads,
            bytes: n[0],
            image_offset: n[1],
            image_len: n[2],
            exited,
        });
    let shared = proptest::collection::vec(
        proptest::collection::vec(
            (any::<i32>(), any::<i32>()).prop_map(|(pid, fd)| MemberFd { pid, fd }),
            0..3,
        ),
        0..2,
    );
    (proptest::collection::vec(member, 0..3), shared).prop_map(|(members, shared_files)| TreeInfo {
        members,
        shared_files,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every metadata value survives encode/decode exactly (u64 and i64 extremes,
    /// arbitrary Unicode strings, every enum variant), whether or not it would validate.
    #[test]
    fn proptest_metadata_roundtrip(m in metadata()) {
        let bytes = encode_metadata(&m);
        prop_assert!(!bytes.is_empty());
        let back = decode_metadata(&bytes).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn proptest_header_footer_roundtrip(
        minor in 0..=FORMAT_MINOR,
        flags in any::<u32>(),
        page_size in any::<u64>(),
        off in any::<u64>(), len in any::<u64>(), crc in any::<u32>(), enc in any::<u32>(),
        file_len in any::<u64>(),
    ) {
        let h = Header { major: FORMAT_MAJOR, minor, flags: 0, page_size: PAGE_SIZE };
        prop_assert_eq!(parse_header(&h.encode()).unwrap(), h);
        let h = Header { flags, page_size, ..h };
        prop_assert_eq!(Header::decode_unchecked(&h.encode()), h);
        let f = Footer {
            metadata_offset: off,
            metadata_len: len,
            metadata_crc32: crc,
            metadata_encoding: enc,
            file_len,
        };
        prop_assert_eq!(Footer::decode_unchecked(&f.encode()), f);
        // parse_footer never panics, whatever the fields.
        let _ = parse_footer(&f.encode(), file_len);
    }

    /// Pages put into a builder, in any grouping, compression and chunk size, read back.
    #[test]
    fn proptest_builder_roundtrip(
        picks in proptest::collection::btree_set(0u64..48, 1..24),
        chunk_pages in 1u64..6,
        stored in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let mut meta = sample_metadata();
        let base = meta.mappings[0].start;
        meta.mappings[0].end = base + 48 * PAGE_SIZE;
        let mut b = ImageBuilder::new(meta);
        b.chunk_size(chunk_pages * PAGE_SIZE);
        if stored {
            b.compression(Compression::None);
        }
        let mut want = BTreeMap::new();
        for &p in &picks {
            let page: Vec<u8> = (0..PAGE_SIZE as usize)
                .map(|i| (i as u8).wrapping_mul(seed) ^ p as u8)
                .collect();
            b.pages(base + p * PAGE_SIZE, &page);
            want.insert(base + p * PAGE_SIZE, page);
        }
        let bytes = b.build();
        let img = ImageFile::from_bytes(&bytes).unwrap();
        let mut got = BTreeMap::new();
        for (i, c) in img.metadata.chunks.iter().enumerate() {
            prop_assert!(c.raw_len <= chunk_pages * PAGE_SIZE);
            let out = img.read_chunk_to_vec(i).unwrap();
            let mut at = 0;
            for r in &c.runs {
                for k in 0..r.pages {
                    got.insert(r.addr + k * PAGE_SIZE, out[at..at + PAGE_SIZE as usize].to_vec());
                    at += PAGE_SIZE as usize;
                }
            }
        }
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------- mini-fuzzer

/// xorshift64*: deterministic, so a failing case is reproduced by its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn interesting(&mut self) -> u64 {
        const VALUES: [u64; 16] = [
            0,
            1,
            7,
            4095,
            4096,
            4097,
            8192,
            0x1000_0000,
            0x7fff_ffff_f000,
            0x8000_0000_0000,
            0xffff_ffff_ff60_0000,
            64 << 20,
            (64 << 20) + 4096,
            u32::MAX as u64,
            i64::MAX as u64,
            u64::MAX,
        ];
        match self.below(3) {
            0 => self.next(),
            1 => self.next() % 100_000,
            _ => VALUES[self.below(VALUES.len())],
        }
    }
}

/// The images mutations start from: the sample, a many-chunk one and one with every
/// metadata list filled.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut meta = sample_metadata();
    let base = meta.mappings[0].start;
    let page = |s: u8| -> Vec<u8> { (0..4096u32).map(|i| (i / 7) as u8 ^ s).collect() };
    let mut b = ImageBuilder::new(meta.clone());
    b.pages(base, &page(1)).pages(base + PAGE_SIZE, &page(2));
    out.push(b.build());

    let mut b = ImageBuilder::new(meta.clone());
    b.chunk_size(PAGE_SIZE);
    for i in 0..5 {
        b.pages(base + 2 * i * PAGE_SIZE, &page(i as u8));
    }
    b.compression(Compression::None).chunk_size(2 * PAGE_SIZE);
    b.pages(
        base + 11 * PAGE_SIZE,
        &[page(9), page(10), page(11)].concat(),
    );
    out.push(b.build());

    meta.fds = (0..3)
        .map(|fd| FdEntry {
            fd,
            flags: 2,
            cloexec: false,
            offset: 0,
            path: "/dev/pts/0".into(),
            kind: FdKind::Tty { rdev: 0x8800 },
            restore: FdRestore::Inherit,
        })
        .collect();
    meta.signals = vec![SigAction {
        signo: 2,
        handler: 0x2000_0100,
        flags: 0x0400_0000,
        restorer: 0x2000_0200,
        mask: 0,
    }];
    meta.rlimits = vec![Rlimit {
        resource: 7,
        cur: 1024,
        max: 4096,
    }];
    meta.mm.auxv = vec![6, 4096, 0, 0];
    meta.threads[0].rseq = Some(Rseq {
        addr: base + 0x100,
        len: 32,
        sig: 0x5305_3053,
    });
    let mut b = ImageBuilder::new(meta);
    b.pages(base + 3 * PAGE_SIZE, &page(3));
    out.push(b.build());
    for s in &out {
        ImageFile::from_bytes(s).expect("seed images are valid");
    }
    out
}

/// Opens `bytes` and reads every chunk; returns how far it got (for the statistics):
/// 0 refused, 1 opened, 2 + the number of chunks read.
fn exercise(bytes: &[u8], errors: &mut BTreeMap<&'static str, usize>) -> usize {
    let img = match ImageFile::from_bytes(bytes) {
        Ok(img) => img,
        Err(e) => {
            let kind = match e {
                ReadError::Io(..) => "io",
                ReadError::TooShort { .. } => "too short",
                ReadError::BadMagic { .. } => "magic",
                ReadError::BadCrc { .. } => "crc",
                ReadError::UnsupportedVersion { .. } => "version",
                ReadError::UnsupportedFlags(_) => "flags",
                ReadError::BadPageSize(_) => "page size",
                ReadError::Truncated { .. } => "length",
                ReadError::BadFooter(_) => "footer",
                ReadError::Metadata(_) => "json",
                ReadError::Invalid(_) => "validation",
                ReadError::Chunk { .. } => "chunk",
            };
            *errors.entry(kind).or_default() += 1;
            return 0;
        }
    };
    let mut scratch = Vec::new();
    let mut read = 0;
    for (i, c) in img.metadata.chunks.iter().enumerate() {
        let mut out = vec![0u8; c.raw_len as usize];
        if img.read_chunk(i, &mut scratch, &mut out).is_ok() {
            read += 1;
        }
    }
    if read < img.metadata.chunks.len() {
        *errors.entry("chunk read").or_default() += 1;
    }
    1 + read
}

/// Changes one random number, string or list in the metadata JSON tree.
fn mutate_json(rng: &mut Rng, v: &mut serde_json::Value) {
    use serde_json::Value;
    // Walk down a random path.
    let go_deeper = rng.below(10) != 0;
    match v {
        Value::Object(map) if go_deeper && !map.is_empty() => {
            let k = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            if let Some(next) = map.get_mut(&k) {
                return mutate_json(rng, next);
            }
        }
        Value::Array(a) if go_deeper && !a.is_empty() => {
            let i = rng.below(a.len());
            return mutate_json(rng, &mut a[i]);
        }
        _ => {}
    }
    // Mostly keep the type, so that the JSON still decodes and validation is reached.
    let r = rng.below(40);
    *v = match &*v {
        _ if r == 0 => Value::Null,
        _ if r == 1 => serde_json::json!(-(rng.below(1000) as i64)),
        _ if r == 2 => serde_json::json!(rng.next() as f64 / 3.0),
        _ if r == 3 => Value::String("stored".into()),
        Value::Array(a) if !a.is_empty() => {
            let mut a = a.clone();
            let i = rng.below(a.len());
            match rng.below(3) {
                0 => {
                    a.remove(i);
                }
                1 => a.push(a[i].clone()),
                _ => {
                    let j = rng.below(a.len());
                    a.swap(i, j)
                }
            }
            Value::Array(a)
        }
        Value::Object(map) if !map.is_empty() => {
            let mut map = map.clone();
            let k = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            map.remove(&k);
            Value::Object(map)
        }
        Value::String(_) => Value::String(
            [
                "anonymous",
                "zstd",
                "none",
                "stored",
                "not_stored",
                "vsyscall",
                "",
                "dev_null",
            ][rng.below(8)]
            .into(),
        ),
        Value::Bool(x) => Value::Bool(!x),
        _ => serde_json::json!(rng.interesting()),
    };
}

/// The image `b` with its metadata (at `meta_at`) replaced by `json`, resealed.
fn with_metadata(b: &[u8], meta_at: usize, json: &[u8]) -> Vec<u8> {
    let mut out = b[..meta_at].to_vec();
    out.extend_from_slice(json);
    let footer = Footer {
        metadata_offset: meta_at as u64,
        metadata_len: json.len() as u64,
        metadata_crc32: 0,
        metadata_encoding: METADATA_ENCODING_JSON,
        file_len: 0,
    };
    out.extend_from_slice(&footer.encode());
    reseal(&out)
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    let meta_at = {
        let img = ImageFile::from_bytes(&b).expect("seed");
        img.footer.metadata_offset as usize
    };
    match rng.below(9) {
        // Bit flips anywhere.
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        // Truncation, with or without a resealed footer.
        1 => {
            b.truncate(rng.below(b.len()));
            if rng.below(2) == 0 {
                b = reseal(&b);
            }
        }
        // A random value in a header or footer field, then resealed or not.
        2 => {
            let n = b.len();
            let at = if rng.below(2) == 0 {
                [8usize, 10, 12, 16][rng.below(4)]
            } else {
                n - FOOTER_LEN + [8usize, 16, 24, 28, 32][rng.below(5)]
            };
            let v = rng.interesting().to_le_bytes();
            let w = 8.min(n - at);
            b[at..at + w].copy_from_slice(&v[..w]);
            if rng.below(2) == 0 {
                let crc = crc32(&b[n - FOOTER_LEN..n - 4]);
                b[n - 4..].copy_from_slice(&crc.to_le_bytes());
                let crc = crc32(&b[..60]);
                b[60..64].copy_from_slice(&crc.to_le_bytes());
            }
        }
        // Byte-level JSON edits, resealed.
        3 => {
            let end = b.len() - FOOTER_LEN;
            let mut json = b[meta_at..end].to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(json.len());
                match rng.below(4) {
                    0 => json[i] = b"0123456789-\"{}[],:eE."[rng.below(21)],
                    1 => {
                        let j = (i + rng.below(32)).min(json.len());
                        json.drain(i..j);
                    }
                    2 => {
                        let tok = [
                            &b"18446744073709551615"[..],
                            b"1e999",
                            b"null",
                            b"[",
                            b"{\"kind\":\"vdso\"}",
                            b"\\u0000",
                            b"\xff",
                        ][rng.below(7)];
                        json.splice(i..i, tok.iter().copied());
                    }
                    _ => {
                        let j = (i + rng.below(64)).min(json.len());
                        let dup = json[i..j].to_vec();
                        json.splice(i..i, dup);
                    }
                }
            }
            b = with_metadata(&b, meta_at, &json);
        }
        // Structured JSON edits (values that still parse), resealed: reaches validation.
        4 | 5 => {
            let end = b.len() - FOOTER_LEN;
            let mut v: serde_json::Value = serde_json::from_slice(&b[meta_at..end]).unwrap();
            for _ in 0..1 + rng.below(2) {
                mutate_json(rng, &mut v);
            }
            b = with_metadata(&b, meta_at, &serde_json::to_vec(&v).unwrap());
        }
        // Damaged chunk bytes with correct CRCs: reaches zstd.
        6 => {
            for _ in 0..1 + rng.below(16) {
                let i =
                    FIRST_CHUNK_OFFSET as usize + rng.below(meta_at - FIRST_CHUNK_OFFSET as usize);
                b[i] = rng.next() as u8;
            }
            b = reseal(&b);
        }
        // Random bytes, sometimes behind a valid header.
        7 => {
            let n = rng.below(3 * 4096);
            let mut r: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 && n >= HEADER_LEN {
                r[..HEADER_LEN].copy_from_slice(&Header::current().encode());
            }
            if rng.below(2) == 0 {
                r = reseal(&r);
            }
            b = r;
        }
        // Bit flips, then everything resealed.
        _ => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            b = reseal(&b);
        }
    }
    b
}

#[test]
fn test_random_and_mutated_images_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases = 6000;
    let mut opened = 0;
    let mut errors = BTreeMap::new();
    for case in 0..cases {
        let b = mutate(&mut rng, &seeds);
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exercise(&b, &mut errors)));
        match r {
            Ok(n) => opened += usize::from(n > 0),
            Err(_) => {
                let path = std::env::temp_dir().join(format!("fpk-panic-case-{case}.fpk"));
                let _ = std::fs::write(&path, &b);
                panic!("case {case} panicked; input saved to {}", path.display());
            }
        }
    }
    eprintln!("{cases} mutated images: {opened} opened; refusals: {errors:?}");
    // The mutations must reach every check, or this tests little.
    assert!(
        opened > cases / 10,
        "only {opened} of {cases} mutated images opened"
    );
    for kind in ["magic", "crc", "json", "validation", "length", "chunk read"] {
        assert!(
            errors.get(kind).is_some_and(|&n| n >= 20),
            "few {kind} errors: {errors:?}"
        );
    }
}
