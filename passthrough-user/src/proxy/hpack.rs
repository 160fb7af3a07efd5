//! HPACK header block decoding (RFC 7541), as much as the peek proxy needs to read the
//! `:authority` of a client's first HTTP/2 request.
//!
//! The decoder is complete for a request stream: indexed fields, the three literal
//! representations, dynamic table insertion and eviction, dynamic table size updates, and
//! strings with or without Huffman coding. It hands every decoded field to a callback instead
//! of building a header list, so an indexed field that names a 4 KiB table entry costs a
//! borrow, not a copy: what it allocates stays proportional to the bytes it is given (string
//! literals, at most 8/5 of their size once Huffman-decoded) plus the table, whose entries share
//! names through [`Rc`].
//!
//! It never panics on any input: every read is bounds-checked and every integer is bounded
//! (the lints below hold the non-test code to that).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::{borrow::Cow, collections::VecDeque, rc::Rc};

/// RFC 7541 §4.1: an entry's size is its name and value lengths plus 32 octets.
const ENTRY_OVERHEAD: usize = 32;

/// A 7-bit-per-byte integer continuation is cut off after this many bytes: 4 carry a value up
/// to 2^28, far above any length or index a header block can hold, and the cut keeps the
/// arithmetic inside `usize` on every platform.
const MAX_INTEGER_CONTINUATION_BYTES: u32 = 4;

/// Why a header block could not be decoded. Each is a `COMPRESSION_ERROR` in HTTP/2 terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends in the middle of a field representation.
    #[error("header block is truncated")]
    Truncated,
    /// An integer longer than any the decoder accepts.
    #[error("integer is too large")]
    IntegerTooLarge,
    /// An index that names no entry (0, or past the end of the dynamic table).
    #[error("index {0} names no table entry")]
    BadIndex(usize),
    /// A Huffman-coded string contains the EOS symbol (RFC 7541 §5.2).
    #[error("Huffman string contains EOS")]
    HuffmanEos,
    /// Huffman padding longer than 7 bits or not made of 1 bits (RFC 7541 §5.2).
    #[error("Huffman string has invalid padding")]
    HuffmanPadding,
    /// A dynamic table size update above the limit the decoder announced (RFC 7541 §6.3).
    #[error("dynamic table size update to {size} exceeds the limit {limit}")]
    TableSizeOverLimit { size: usize, limit: usize },
    /// A dynamic table size update after the first field of a block (RFC 7541 §4.2).
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
}

/// A dynamic table entry. Names are shared between entries that index the same name, so a
/// run of literals reusing a long name does not copy it.
#[derive(Debug)]
struct Entry {
    name: Rc<[u8]>,
    value: Rc<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name
            .len()
            .saturating_add(self.value.len())
            .saturating_add(ENTRY_OVERHEAD)
    }
}

/// An HPACK decoder: one per connection direction, as the dynamic table lives across blocks.
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first: HPACK index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The table's current maximum size, as last set by a size update.
    capacity: usize,
    /// The most a size update may set: the `SETTINGS_HEADER_TABLE_SIZE` the peer was told.
    limit: usize,
}

impl Decoder {
    /// A decoder whose dynamic table may hold up to `limit` octets (HTTP/2's default is 4096).
    pub fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            capacity: limit,
            limit,
        }
    }

    /// The dynamic table's size in octets, as RFC 7541 §4.1 counts it.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The dynamic table's entries, newest first.
    pub fn table(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (&*e.name, &*e.value))
    }

    /// Decodes one complete header block, calling `field` with each header field in order.
    ///
    /// On error the fields already reported stay reported and the table may hold part of the
    /// block's insertions: HTTP/2 ends the connection on any decoding error, and so does the
    /// peek proxy.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut input = block;
        let mut fields_seen = false;
        while let Some(&first) = input.first() {
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                let (index, rest) = integer(input, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
                input = rest;
            } else if first & 0x40 != 0 {
                // §6.2.1 Literal Header Field with Incremental Indexing.
                let (index, rest) = integer(input, 6)?;
                let (name, rest) = if index == 0 {
                    let (name, rest) = string(rest)?;
                    (Rc::from(name), rest)
                } else {
                    (self.shared_name(index)?, rest)
                };
                let (value, rest) = string(rest)?;
                field(&name, &value);
                self.insert(Entry {
                    name,
                    value: Rc::from(value),
                });
                input = rest;
            } else if first & 0x20 != 0 {
                // §6.3 Dynamic Table Size Update: only before the block's first field (§4.2).
                if fields_seen {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let (size, rest) = integer(input, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSizeOverLimit {
                        size,
                        limit: self.limit,
                    });
                }
                self.capacity = size;
                self.evict_to(size);
                input = rest;
                continue;
            } else {
                // §6.2.2 Literal without Indexing (0000) and §6.2.3 Never Indexed (0001):
                // the same layout, and neither touches the table.
                let (index, rest) = integer(input, 4)?;
                input = if index == 0 {
                    let (name, rest) = string(rest)?;
                    let (value, rest) = string(rest)?;
                    field(&name, &value);
                    rest
                } else {
                    let (name, _) = self.entry(index)?;
                    let (value, rest) = string(rest)?;
                    field(name, &value);
                    rest
                };
            }
            fields_seen = true;
        }
        Ok(())
    }

    /// The name and value at `index` of the combined static and dynamic index space (§2.3.3).
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index <= STATIC_TABLE.len() {
            let (name, value) = index
                .checked_sub(1)
                .and_then(|i| STATIC_TABLE.get(i))
                .ok_or(HpackError::BadIndex(index))?;
            Ok((name.as_bytes(), value.as_bytes()))
        } else {
            index
                .checked_sub(STATIC_TABLE.len().saturating_add(1))
                .and_then(|i| self.entries.get(i))
                .map(|e| (&*e.name, &*e.value))
                .ok_or(HpackError::BadIndex(index))
        }
    }

    /// The name at `index`, shared with its table entry when it is a dynamic one.
    fn shared_name(&self, index: usize) -> Result<Rc<[u8]>, HpackError> {
        if index > STATIC_TABLE.len() {
            index
                .checked_sub(STATIC_TABLE.len().saturating_add(1))
                .and_then(|i| self.entries.get(i))
                .map(|e| Rc::clone(&e.name))
                .ok_or(HpackError::BadIndex(index))
        } else {
            self.entry(index).map(|(name, _)| Rc::from(name))
        }
    }

    /// §4.4: evict from the oldest end until the new entry fits; an entry larger than the
    /// whole table empties it and is not added (not an error).
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.capacity {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.capacity.saturating_sub(size));
        self.size = self.size.saturating_add(size);
        self.entries.push_front(entry);
    }

    /// Evicts the oldest entries until the table holds at most `target` octets.
    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(old) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size = self.size.saturating_sub(old.size());
        }
    }
}

/// Decodes an integer with an `prefix_bits`-bit prefix (§5.1), returning it and what follows.
fn integer(input: &[u8], prefix_bits: u32) -> Result<(usize, &[u8]), HpackError> {
    let (&first, mut rest) = input.split_first().ok_or(HpackError::Truncated)?;
    let max_prefix = u8::MAX
        .checked_shr(8u32.saturating_sub(prefix_bits))
        .unwrap_or(0);
    let mut value = usize::from(first & max_prefix);
    if value < usize::from(max_prefix) {
        return Ok((value, rest));
    }
    for continuation in 0..MAX_INTEGER_CONTINUATION_BYTES {
        let (&byte, after) = rest.split_first().ok_or(HpackError::Truncated)?;
        rest = after;
        // At most 7 * 3 = 21 bits of shift: 127 << 21 < 2^28 fits any usize.
        let shift = continuation.saturating_mul(7);
        let part = usize::from(byte & 0x7f)
            .checked_shl(shift)
            .ok_or(HpackError::IntegerTooLarge)?;
        value = value.checked_add(part).ok_or(HpackError::IntegerTooLarge)?;
        if byte & 0x80 == 0 {
            return Ok((value, rest));
        }
    }
    Err(HpackError::IntegerTooLarge)
}

/// Decodes a string literal (§5.2), borrowing it from the input unless Huffman-coded.
fn string(input: &[u8]) -> Result<(Cow<'_, [u8]>, &[u8]), HpackError> {
    let huffman = input.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, rest) = integer(input, 7)?;
    let (raw, rest) = rest.split_at_checked(len).ok_or(HpackError::Truncated)?;
    let value = if huffman {
        Cow::Owned(huffman_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    Ok((value, rest))
}

/// The static table (RFC 7541 Appendix A): index `i` is `STATIC_TABLE[i - 1]`.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The symbol HPACK's Huffman code reserves for end-of-string; never valid inside a string.
const EOS: u16 = 256;

/// The longest code of the HPACK Huffman code, in bits.
const MAX_CODE_BITS: usize = 30;

/// Code length in bits of each symbol 0..=255 and of EOS (256), from RFC 7541 Appendix B.
///
/// The Appendix B code is canonical: ordering the symbols by (code length, symbol value) and
/// counting upwards gives exactly its codes, so the lengths alone define it. The tests check
/// this against codes and examples printed in the RFC.
const CODE_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..DEL
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// The canonical code in the form a bit-at-a-time decoder walks: how many codes have each
/// length, and the symbols in code order.
struct CanonicalCode {
    count: [u16; MAX_CODE_BITS + 1],
    symbols: [u16; 257],
}

/// Built at compile time; the lints are lifted because a const evaluation that indexed out of
/// bounds or overflowed would fail the build, never a request.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn canonical_code() -> CanonicalCode {
    let mut count = [0u16; MAX_CODE_BITS + 1];
    let mut symbol = 0;
    while symbol < CODE_BITS.len() {
        count[CODE_BITS[symbol] as usize] += 1;
        symbol += 1;
    }
    // Where each length's symbols start in `symbols`.
    let mut next = [0u16; MAX_CODE_BITS + 1];
    let mut bits = 1;
    while bits < MAX_CODE_BITS {
        next[bits + 1] = next[bits] + count[bits];
        bits += 1;
    }
    let mut symbols = [0u16; 257];
    symbol = 0;
    while symbol < CODE_BITS.len() {
        let bits = CODE_BITS[symbol] as usize;
        symbols[next[bits] as usize] = symbol as u16;
        next[bits] += 1;
        symbol += 1;
    }
    CanonicalCode { count, symbols }
}

const CANONICAL: CanonicalCode = canonical_code();

/// Decodes a Huffman-coded string (§5.2).
///
/// Reads one bit at a time: after `bits` bits, the codes of that length are the
/// `count[bits]` consecutive values from `first`, so the bits read so far are a symbol when
/// they fall in that range, and otherwise the next length's first code is
/// `(first + count) << 1`. Simple, table-free beyond 514 `u16`s, and linear in the input.
fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, HpackError> {
    // The shortest code is 5 bits: at most 8 symbols per 5 bytes.
    let mut out = Vec::with_capacity(input.len().saturating_mul(8) / 5);
    let mut code: u32 = 0; // the bits of the symbol being read
    let mut bits: usize = 0; // how many there are
    let mut first: u32 = 0; // the first code of length `bits`
    let mut index: usize = 0; // where the codes of length `bits` start in `symbols`
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            bits = bits.saturating_add(1);
            let count = u32::from(CANONICAL.count.get(bits).copied().unwrap_or(0));
            // `code >= first` holds by construction; checked anyway.
            let offset = code.checked_sub(first).ok_or(HpackError::HuffmanPadding)?;
            if offset < count {
                let at = index.saturating_add(offset as usize);
                match CANONICAL.symbols.get(at).copied() {
                    Some(EOS) | None => return Err(HpackError::HuffmanEos),
                    Some(symbol) => out.push(symbol as u8),
                }
                (code, bits, first, index) = (0, 0, 0, 0);
            } else {
                if bits >= MAX_CODE_BITS {
                    // Unreachable with a complete code; bounds the loop all the same.
                    return Err(HpackError::HuffmanEos);
                }
                index = index.saturating_add(count as usize);
                first = first.saturating_add(count) << 1;
            }
        }
    }
    // §5.2: what is left must be a prefix of EOS (all ones) shorter than 8 bits.
    let all_ones = u32::MAX
        .checked_shr(32u32.saturating_sub(bits as u32))
        .unwrap_or(0);
    if bits > 7 || code != all_ones {
        return Err(HpackError::HuffmanPadding);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ));
        })?;
        Ok(out)
    }

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    /// The code of each symbol, derived from the lengths the canonical way (test encoder).
    fn codes() -> Vec<(u32, u8)> {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (CODE_BITS[s], s));
        let mut codes = vec![(0u32, 0u8); 257];
        let (mut code, mut prev) = (0u32, CODE_BITS[order[0]]);
        for (i, &s) in order.iter().enumerate() {
            if i > 0 {
                code = (code + 1) << (CODE_BITS[s] - prev);
            }
            prev = CODE_BITS[s];
            codes[s] = (code, CODE_BITS[s]);
        }
        codes
    }

    fn huffman_encode(input: &[u8]) -> Vec<u8> {
        let codes = codes();
        let (mut acc, mut n, mut out) = (0u64, 0u32, Vec::new());
        for &b in input {
            let (code, bits) = codes[usize::from(b)];
            acc = (acc << bits) | u64::from(code);
            n += u32::from(bits);
            while n >= 8 {
                out.push((acc >> (n - 8)) as u8);
                n -= 8;
            }
        }
        if n > 0 {
            out.push(((acc << (8 - n)) as u8) | (0xff >> n));
        }
        out
    }

    #[test]
    fn huffman_code_is_complete_and_matches_rfc_appendix_b_samples() {
        // Kraft equality: a complete prefix code, so every bit string decodes or is padding.
        let kraft: f64 = CODE_BITS.iter().map(|&b| 0.5f64.powi(i32::from(b))).sum();
        assert!((kraft - 1.0).abs() < 1e-12, "{kraft}");
        let codes = codes();
        // (symbol, code, bits) as printed in RFC 7541 Appendix B.
        for (sym, code, bits) in [
            (0usize, 0x1ff8u32, 13u8),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'X' as usize, 0xfc, 8),
            (b'\\' as usize, 0x7fff0, 19),
            (b'~' as usize, 0x1ffd, 13),
            (10, 0x3ffffffc, 30),
            (128, 0xfffe6, 20),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ] {
            assert_eq!(codes[sym], (code, bits), "symbol {sym}");
        }
    }

    #[test]
    fn huffman_roundtrips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            assert_eq!(huffman_decode(&huffman_encode(&[b])).unwrap(), vec![b]);
        }
        assert_eq!(huffman_decode(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        // 'a' is 00011: padding with zeros instead of ones.
        assert_eq!(
            huffman_decode(&[0b0001_1000]),
            Err(HpackError::HuffmanPadding)
        );
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(huffman_decode(&[0xff]), Err(HpackError::HuffmanPadding));
        // 'a' then 8+ bits of ones.
        assert_eq!(
            huffman_decode(&[0b0001_1111, 0xff]),
            Err(HpackError::HuffmanPadding)
        );
        // EOS (30 ones) then 2 padding ones.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::HuffmanEos)
        );
    }

    #[test]
    fn integers_follow_rfc_7541_c1() {
        // C.1.1: 10 with a 5-bit prefix.
        assert_eq!(integer(&[0b0000_1010], 5).unwrap().0, 10);
        // C.1.2: 1337 with a 5-bit prefix.
        assert_eq!(integer(&[0b0001_1111, 0x9a, 0x0a], 5).unwrap().0, 1337);
        // C.1.3: 42 with an 8-bit prefix.
        assert_eq!(integer(&[42], 8).unwrap().0, 42);
        assert_eq!(integer(&[0x1f, 0x9a], 5), Err(HpackError::Truncated));
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x01], 5),
            Err(HpackError::IntegerTooLarge)
        );
    }

    const REQ1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQ2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQ3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];

    fn check_requests(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, &hex(blocks[0])).unwrap(), list(REQ1));
        assert_eq!(table(&d), list(&[(":authority", "www.example.com")]));
        assert_eq!(d.table_size(), 57);
        assert_eq!(decode_all(&mut d, &hex(blocks[1])).unwrap(), list(REQ2));
        assert_eq!(
            table(&d),
            list(&[
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 110);
        assert_eq!(decode_all(&mut d, &hex(blocks[2])).unwrap(), list(REQ3));
        assert_eq!(
            table(&d),
            list(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman() {
        check_requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        check_requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const LOCATION: &str = "https://www.example.com";

    #[test]
    fn rfc_7541_c5_responses_evict_from_a_256_octet_table() {
        let mut d = Decoder::new(256);
        let r1 = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
        );
        let want1 = [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION),
        ];
        assert_eq!(decode_all(&mut d, &r1).unwrap(), list(&want1));
        assert_eq!(d.table_size(), 222);
        let r2 = hex("4803 3330 37c1 c0bf");
        let want2 = [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION),
        ];
        assert_eq!(decode_all(&mut d, &r2).unwrap(), list(&want2));
        // ":status: 302" was evicted to make room for ":status: 307".
        assert_eq!(
            table(&d),
            list(&[
                (":status", "307"),
                ("location", LOCATION),
                ("date", DATE1),
                ("cache-control", "private"),
            ])
        );
        assert_eq!(d.table_size(), 222);
        let r3 = hex(
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        );
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let want3 = [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", LOCATION),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ];
        assert_eq!(decode_all(&mut d, &r3).unwrap(), list(&want3));
        assert_eq!(
            table(&d),
            list(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ])
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn rfc_7541_c6_responses_with_huffman() {
        let mut d = Decoder::new(256);
        let r1 = hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        );
        let want1 = [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION),
        ];
        assert_eq!(decode_all(&mut d, &r1).unwrap(), list(&want1));
        assert_eq!(d.table_size(), 222);
        let want2 = [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", LOCATION),
        ];
        let r2 = hex("4883 640e ffc1 c0bf");
        assert_eq!(decode_all(&mut d, &r2).unwrap(), list(&want2));
        assert_eq!(d.table_size(), 222);
    }

    #[test]
    fn size_updates_evict_and_are_bounded() {
        let mut d = Decoder::new(4096);
        decode_all(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        )
        .unwrap();
        assert_eq!(d.table_size(), 57);
        // Size update to 0 (0x20) empties the table; then index 62 names nothing.
        assert_eq!(
            decode_all(&mut d, &[0x20, 0x82]).unwrap(),
            list(&[(":method", "GET")])
        );
        assert_eq!(d.table_size(), 0);
        assert_eq!(decode_all(&mut d, &[0xbe]), Err(HpackError::BadIndex(62)));
        // 4097 > 4096: 001 11111 + (4097 - 31 = 4066 = 0xe2 0x1f).
        assert_eq!(
            decode_all(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSizeOverLimit {
                size: 4097,
                limit: 4096
            })
        );
        // A size update after a field.
        assert_eq!(
            decode_all(&mut d, &[0x82, 0x20]),
            Err(HpackError::LateTableSizeUpdate)
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, &[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(
            decode_all(&mut d, &[0x40 | 62]),
            Err(HpackError::BadIndex(62))
        );
        assert_eq!(
            decode_all(&mut d, &[0x00, 0x03, b'a']),
            Err(HpackError::Truncated)
        );
        assert_eq!(decode_all(&mut d, &[0x01]), Err(HpackError::Truncated));
        // Never-indexed literal with a static name: decoded, not added to the table.
        assert_eq!(
            decode_all(&mut d, &[0x11, 0x01, b'x']).unwrap(),
            list(&[(":authority", "x")])
        );
        assert_eq!(d.table_size(), 0);
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64);
        decode_all(&mut d, &[0x41, 0x01, b'a']).unwrap(); // :authority: a (43 octets)
        assert_eq!(d.table_size(), 43);
        // :authority with a 40-byte value: 10 + 40 + 32 = 82 > 64.
        let block = [&[0x41u8, 40][..], &[b'z'; 40][..]].concat();
        decode_all(&mut d, &block).unwrap();
        assert_eq!(d.table_size(), 0);
        assert_eq!(d.table().count(), 0);
    }

    #[test]
    fn indexed_names_share_storage_with_the_table() {
        let mut d = Decoder::new(4096);
        // custom-key: custom-value added, then a literal reusing dynamic name 62.
        let mut block = hex("400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
        block.extend_from_slice(&[0x40 | 62, 0x01, b'v']);
        decode_all(&mut d, &block).unwrap();
        let names: Vec<_> = d.entries.iter().map(|e| Rc::clone(&e.name)).collect();
        assert!(Rc::ptr_eq(&names[0], &names[1]));
    }
}
