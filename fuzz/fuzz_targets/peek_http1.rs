//! The HTTP/1 request head reader: request line, headers, the Host and authority rules.
//! Input: a seed byte for the segmentation, then the bytes a client sends.
#![no_main]

#[path = "peek_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    common::peek_segmented(seed, rest);
});
