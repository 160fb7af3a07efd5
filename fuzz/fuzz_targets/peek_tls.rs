//! The TLS ClientHello reader: records reassembled, the hello parsed, its SNI read.
//! Input: a seed byte for the segmentation, then what follows the record type and major
//! version (the two bytes that route `peek` to TLS, added here).
#![no_main]

#[path = "peek_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let buf = [&[22u8, 3][..], rest].concat();
    common::peek_segmented(seed, &buf);
});
