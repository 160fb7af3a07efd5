//! The segmentation invariant the peek targets share.

use passthrough::{
    policy::decide::Peeked,
    proxy::peek::{PeekError, Progress, peek},
};

/// A verdict as the proxy acts on it: errors by their kind (the message may name the first
/// of several faults, which depends on how much arrived), decisions exactly.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NeedMore,
    Done(String),
    Refused(&'static str),
}

fn outcome(r: Result<Progress, PeekError>) -> Outcome {
    match r {
        Ok(Progress::NeedMore) => Outcome::NeedMore,
        Ok(Progress::Done(p)) => Outcome::Done(format!("{p:?}")),
        Err(e) => Outcome::Refused(e.kind()),
    }
}

/// Feeds `buf` to the peek readers as the proxy does, a growing prefix per arrival, with up
/// to 16 arrivals whose sizes `seed` picks. Asserts that:
/// - nothing panics (the harness catches that);
/// - a prefix that decides decides as the whole buffer does, so the verdict does not depend
///   on how the client's bytes were segmented;
/// - a name read is no longer than the bytes it came from.
pub fn peek_segmented(seed: u8, buf: &[u8]) {
    let result = peek(buf);
    if let Ok(Progress::Done(
        Peeked::Tls(Some(name)) | Peeked::Http1(Some(name)) | Peeked::Http2(Some(name)),
    )) = &result
    {
        // HPACK's Huffman code can expand a literal to 8/5 of its size, no more.
        assert!(
            name.len() <= buf.len() * 8 / 5 + 1,
            "a name of {} bytes from {} bytes",
            name.len(),
            buf.len()
        );
    }
    let whole = outcome(result);
    let mut state = u32::from(seed) | 0x100;
    let mut cut = 0usize;
    for _ in 0..16 {
        // xorshift32: deterministic per seed, so a crash reproduces from its input alone.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let step = 1 + (state as usize) % (buf.len() / 4 + 1);
        cut = (cut + step).min(buf.len());
        let part = outcome(peek(&buf[..cut]));
        if part != Outcome::NeedMore {
            assert_eq!(
                part,
                whole,
                "decided differently on the first {cut} of {} bytes",
                buf.len()
            );
        }
        if cut == buf.len() {
            break;
        }
    }
}
