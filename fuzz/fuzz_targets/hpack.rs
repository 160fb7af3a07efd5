//! The HPACK decoder on its own, across two header blocks (the dynamic table lives from one
//! to the next). Input: two bytes of table limit, one byte where the blocks split, then the
//! blocks. Asserts the RFC 7541 bounds: the table never holds more than its limit, and a
//! field's name and value each come from a table (the dynamic one holds at most the limit,
//! the static one's entries are short) or are literals of the block (at most 8/5 of it once
//! Huffman-decoded).
#![no_main]

use passthrough::proxy::hpack::Decoder;

/// Bytes of the longest name and value of RFC 7541's static table, with room to spare.
const STATIC_ENTRY_MAX: usize = 64;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [a, b, split, blocks @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*a, *b]));
    let split = usize::from(*split).min(blocks.len());
    let mut decoder = Decoder::new(limit);
    for block in [&blocks[..split], &blocks[split..]] {
        // A name or value comes from a table (the static one's longest entry is 28 bytes)
        // or is a literal of the block.
        let bound = limit.max(STATIC_ENTRY_MAX) + block.len() * 8 / 5 + 1;
        let mut fields = 0usize;
        let result = decoder.decode(block, |name, value| {
            fields += 1;
            assert!(
                name.len() + value.len() <= bound,
                "field of {} bytes from a block of {}",
                name.len() + value.len(),
                block.len()
            );
        });
        assert!(fields <= block.len(), "more fields than bytes");
        assert!(decoder.table_size() <= limit, "table past its limit");
        if result.is_err() {
            break;
        }
    }
});
