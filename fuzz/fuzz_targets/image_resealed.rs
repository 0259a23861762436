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
    for (i, c) in img.metadata.chunks.iter().enumerate() {
        let mut out = vec![0u8; c.raw_len as usize];
        let _ = img.read_chunk(i, &mut scratch, &mut out);
    }
});
