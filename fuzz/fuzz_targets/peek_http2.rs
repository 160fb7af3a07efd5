//! The HTTP/2 prior-knowledge reader: frames after the preface up to the first request's
//! header block, decoded with HPACK. Input: a seed byte for the segmentation, then the
//! frames (the connection preface is added here).
#![no_main]

#[path = "peek_common.rs"]
mod common;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let buf = [PREFACE, rest].concat();
    common::peek_segmented(seed, &buf);
});
