//! Like `image_reader`, but every checksum and length is made consistent first
//! (`forkpoint_image::build::reseal`), so that mutations of the metadata JSON and of the
//! chunks get past the CRCs and reach JSON decoding, validation and zstd.
#![no_main]

use forkpoint_image::build::reseal;
use forkpoint_image::ImageFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = reseal(data);
    let Ok(img) = ImageFile::from_bytes(&bytes) else {
        return;
    };
    let mut scratch = Vec::new();
    let mut reader = forkpoint_image::read::ChunkReader::new();
    for (i, c) in img.metadata.chunks.iter().enumerate() {
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
