//! Any bytes as an image file: the reader may refuse them, but must not panic, hang or
//! allocate without bound. Opens the image from memory and reads every chunk.
#![no_main]

use forkpoint_image::ImageFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = ImageFile::from_bytes(data) else {
        return;
    };
    let mut scratch = Vec::new();
    let mut reader = forkpoint_image::read::ChunkReader::new();
    for (i, c) in img.metadata.chunks.iter().enumerate() {
        // Validation bounds raw_len by MAX_CHUNK_RAW_LEN (64 MiB).
        let mut out = vec![0u8; c.raw_len as usize];
        let a = img.read_chunk(i, &mut scratch, &mut out).is_ok();
        // The restart's reader (straight into the destination, reused buffers) must agree.
        let mut direct = vec![0u8; c.raw_len as usize];
        let b = img.read_chunk_into(i, &mut reader, &mut direct).is_ok();
        assert_eq!(a, b, "read_chunk and read_chunk_into disagree on chunk {i}");
        if a {
            assert!(out == direct, "read_chunk and read_chunk_into differ on chunk {i}");
        }
    }
});
