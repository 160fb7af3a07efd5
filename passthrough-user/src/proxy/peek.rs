//! Reads which protocol a client speaks and which host it asks for from the first bytes it
//! sends on a TCP connection, before any byte is forwarded (semantics.md, "Peek proxy").
//!
//! The proxy calls [`peek`] with everything received so far, each time more arrives; it
//! answers [`Progress::NeedMore`] until the bytes decide:
//!
//! - **TLS**: the ClientHello, reassembled from as many handshake records as it spans
//!   (post-quantum key shares push it past one TCP segment, and clients may split it into
//!   several records), then parsed with `tls-parser`. The name is the SNI `host_name`.
//! - **HTTP/1.x**: the request head up to its empty line. The name is the request-target's
//!   authority when the target carries one (absolute form, or CONNECT's authority form: RFC
//!   9112 §3.2 makes it win over Host), and otherwise the Host header.
//! - **HTTP/2 with prior knowledge** (h2c, and gRPC, which is HTTP/2): the connection
//!   preface, then frames up to the first request's complete header block, decoded with
//!   [`hpack`](super::hpack). The name is `:authority`, or else `host`.
//! - Anything else is [`Peeked::Unknown`] as soon as the bytes cannot begin any of the three.
//!
//! Names are returned raw (case, trailing dot and port as sent): the policy engine normalises
//! them. A filter and the destination must read the same name, so where the bytes are
//! ambiguous `peek` refuses with a [`PeekError`] rather than guessing: two SNI names, two Host
//! headers, a `host` that differs from `:authority`, userinfo or spaces in an authority,
//! obsolete line folding, lengths that do not add up.
//!
//! Guarantees:
//! - Pure: no I/O and no state between calls; a call on a longer buffer reads it afresh.
//! - Never panics on any input: no unchecked indexing or arithmetic (the lints below hold the
//!   non-test code to it), and the tests feed every prefix of each sample and thousands of
//!   random and mutated inputs.
//! - Bounded work: time and allocation are linear in `buf.len()`. Nothing is sized from a
//!   length the client wrote, only from bytes that arrived. The size and time bounds are the
//!   caller's: it gives up when `peek` still needs more past its limit.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use tls_parser::{SNIType, TlsExtension, parse_tls_extension, parse_tls_handshake_client_hello};

use super::hpack::{self, HpackError};
use crate::policy::decide::Peeked;

/// Result of looking at the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not enough bytes yet to decide; read more (the caller enforces size/time bounds).
    NeedMore,
    /// Decided. The name is RAW as the client sent it (SNI string, Host header value,
    /// `:authority` value): the policy engine normalises case, trailing dot and port itself
    /// (see `policy::decide::host_name`, `policy::compile::normalize_name`).
    Done(Peeked),
}

/// Bytes that start as one of the protocols but break its rules: the caller refuses the
/// connection. The reason is for logs; [`PeekError::kind`] is the label for metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// A TLS record or ClientHello that breaks the protocol.
    #[error("malformed TLS ClientHello: {0}")]
    Tls(&'static str),
    /// An HTTP/1 request head that breaks RFC 9112, or is ambiguous about its host.
    #[error("malformed HTTP/1 request head: {0}")]
    Http1(&'static str),
    /// HTTP/2 frames that break RFC 9113 before the first request, or an ambiguous host.
    #[error("malformed HTTP/2 connection start: {0}")]
    Http2(&'static str),
    /// The first request's header block does not decode.
    #[error("HTTP/2 header block does not decode: {0}")]
    Hpack(#[from] HpackError),
}

impl PeekError {
    /// A stable short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tls(_) => "tls_malformed",
            Self::Http1(_) => "http1_malformed",
            Self::Http2(_) => "http2_malformed",
            Self::Hpack(_) => "hpack",
        }
    }
}

/// Decides, from the bytes a client sent so far, its protocol and the host it asks for.
pub fn peek(buf: &[u8]) -> Result<Progress, PeekError> {
    match buf {
        [] | [CONTENT_HANDSHAKE] => Ok(Progress::NeedMore),
        [CONTENT_HANDSHAKE, TLS_MAJOR, ..] => peek_tls(buf),
        [CONTENT_HANDSHAKE, ..] => Ok(Progress::Done(Peeked::Unknown)),
        _ => {
            if let Some(frames) = buf.strip_prefix(H2_PREFACE) {
                peek_http2(frames)
            } else if H2_PREFACE.starts_with(buf) {
                Ok(Progress::NeedMore)
            } else {
                // "PRI" is also a valid HTTP/1 method token: a preface that diverges is read
                // as HTTP/1, whose parser then finds no `HTTP/1.x` version and says Unknown.
                peek_http1(buf)
            }
        }
    }
}

/// The name a client sent in an authority position (Host, `:authority`, a request-target's
/// authority), checked to be one an HTTP server would read the same way: printable ASCII
/// without spaces and without userinfo. Empty means no name.
fn authority_name(raw: Option<&[u8]>) -> Result<Option<String>, &'static str> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if !raw.iter().all(u8::is_ascii_graphic) {
        return Err("host is not printable ASCII without spaces");
    }
    if raw.contains(&b'@') {
        return Err("host carries userinfo");
    }
    std::str::from_utf8(raw)
        .map(|s| Some(s.to_owned()))
        .map_err(|_| "host is not ASCII")
}

/// A big-endian 24-bit length, as TLS handshake and HTTP/2 frame headers carry.
fn u24([a, b, c]: [u8; 3]) -> usize {
    u32::from_be_bytes([0, a, b, c]) as usize
}

// ---------------------------------------------------------------------------------------------
// TLS

const CONTENT_HANDSHAKE: u8 = 22;
const TLS_MAJOR: u8 = 3;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// The largest record any TLS version allows (TLSCiphertext, 2^14 + 2048, RFC 8446 §5.2); a
/// ClientHello's plaintext records are smaller still, so anything longer is not TLS.
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// Reassembles the first handshake message from the records received so far and, once it is
/// whole, reads its SNI.
fn peek_tls(buf: &[u8]) -> Result<Progress, PeekError> {
    // The handshake bytes of the records so far: at most `buf.len()`, whatever lengths the
    // headers announce.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
            check_record_start(rest)?;
            return Ok(Progress::NeedMore);
        };
        let [content_type, major, _minor, len_hi, len_lo] = *header;
        check_record_start(&[content_type, major])?;
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len == 0 {
            // RFC 8446 §5.1: handshake records must not be empty.
            return Err(PeekError::Tls("empty handshake record"));
        }
        if len > MAX_RECORD_LEN {
            return Err(PeekError::Tls("record longer than 2^14 + 2048 bytes"));
        }
        let (fragment, next) = after.split_at_checked(len).unwrap_or((after, &[]));
        message.extend_from_slice(fragment);
        if let Some(body) = whole_client_hello(&message)? {
            return client_hello_sni(body).map(|sni| Progress::Done(Peeked::Tls(sni)));
        }
        if fragment.len() < len {
            return Ok(Progress::NeedMore);
        }
        rest = next;
    }
}

/// Checks the content type and major version of a record header, as far as it has arrived.
fn check_record_start(header: &[u8]) -> Result<(), PeekError> {
    if header.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
        return Err(PeekError::Tls(
            "a record other than handshake before the ClientHello is complete",
        ));
    }
    if header.get(1).is_some_and(|&v| v != TLS_MAJOR) {
        return Err(PeekError::Tls("record version is not TLS"));
    }
    Ok(())
}

/// The ClientHello body once the reassembled handshake bytes hold all of it; refuses another
/// handshake message type as soon as its first byte is there.
fn whole_client_hello(message: &[u8]) -> Result<Option<&[u8]>, PeekError> {
    let Some((&msg_type, rest)) = message.split_first() else {
        return Ok(None);
    };
    if msg_type != HANDSHAKE_CLIENT_HELLO {
        return Err(PeekError::Tls(
            "first handshake message is not a ClientHello",
        ));
    }
    let Some((&len, body)) = rest.split_first_chunk::<3>() else {
        return Ok(None);
    };
    Ok(body.get(..u24(len)))
}

/// The SNI host name of a whole ClientHello body (without its 4-byte handshake header).
fn client_hello_sni(body: &[u8]) -> Result<Option<String>, PeekError> {
    let (rest, hello) = parse_tls_handshake_client_hello(body)
        .map_err(|_| PeekError::Tls("ClientHello fields are malformed"))?;
    // tls-parser reads the extension block only when its length fits, and ignores what
    // follows it: either way unread bytes mean the lengths do not add up.
    if !rest.is_empty() {
        return Err(PeekError::Tls(
            "ClientHello lengths do not match its handshake length",
        ));
    }
    match hello.ext {
        None => Ok(None),
        Some(extensions) => server_name(extensions),
    }
}

/// Walks the extension block and reads the server_name extension, if any.
///
/// The walk itself is done here rather than with `parse_tls_extensions`, which stops quietly
/// at the first extension it cannot parse in detail: a client is free to send extensions (or
/// new encodings of known ones) that tls-parser does not know, and an SNI after one of them
/// must still be found. Only the server_name extension is handed to tls-parser.
fn server_name(extensions: &[u8]) -> Result<Option<String>, PeekError> {
    let mut rest = extensions;
    let mut found = None;
    while !rest.is_empty() {
        let Some(&[t0, t1, l0, l1]) = rest.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
            return Err(PeekError::Tls(
                "extension block ends inside an extension header",
            ));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some((extension, next)) = len
            .checked_add(HANDSHAKE_HEADER_LEN)
            .and_then(|whole| rest.split_at_checked(whole))
        else {
            return Err(PeekError::Tls("extension longer than the extension block"));
        };
        if u16::from_be_bytes([t0, t1]) == EXTENSION_SERVER_NAME {
            // RFC 8446 §4.2: an extension type appears at most once.
            if found.is_some() {
                return Err(PeekError::Tls("two server_name extensions"));
            }
            found = Some(sni_host_name(extension, len)?);
        }
        rest = next;
    }
    Ok(found.flatten())
}

/// The host_name of a whole server_name extension (header included) whose data is
/// `data_len` bytes long.
fn sni_host_name(extension: &[u8], data_len: usize) -> Result<Option<String>, PeekError> {
    let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension(extension) else {
        return Err(PeekError::Tls("server_name extension is malformed"));
    };
    // tls-parser stops quietly at an entry it cannot read: the list length (2 bytes) and
    // every entry (type, 2-byte length, name) must account for all of the data.
    let listed = names.iter().try_fold(2usize, |sum, (_, name)| {
        sum.checked_add(3)?.checked_add(name.len())
    });
    if listed != Some(data_len) {
        return Err(PeekError::Tls("server_name list lengths do not add up"));
    }
    let mut host_names = names
        .iter()
        .filter(|(kind, _)| *kind == SNIType::HostName)
        .map(|&(_, name)| name);
    let name = match (host_names.next(), host_names.next()) {
        // Only names of other types: no host name.
        (None, _) => return Ok(None),
        // RFC 6066 §3: at most one name of each type.
        (Some(_), Some(_)) => return Err(PeekError::Tls("more than one SNI host_name")),
        (Some(name), None) => name,
    };
    if name.is_empty() {
        return Err(PeekError::Tls("empty SNI host_name"));
    }
    std::str::from_utf8(name)
        .map(|s| Some(s.to_owned()))
        .map_err(|_| PeekError::Tls("SNI host_name is not UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1

/// Longer method tokens are taken as "not HTTP": real methods are short, and the cap decides
/// Unknown early for a long run of token characters.
const MAX_METHOD_LEN: usize = 32;

/// How far bytes match a grammar that is read as it arrives.
enum Scan<T> {
    /// Everything so far fits, and more is needed.
    Partial,
    /// The bytes cannot be this.
    Mismatch,
    /// Matched, with what was read.
    Match(T),
}

/// A request line (RFC 9112 §3) and the bytes after it.
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    fields: &'a [u8],
}

/// The header section, as far as it has arrived.
enum HeaderSection<'a> {
    Partial,
    Complete { host: Option<&'a [u8]> },
}

/// HTTP/1: the request line decides whether this is HTTP/1 at all (a mismatch there is
/// Unknown, as for any other protocol); past it, broken rules are errors.
fn peek_http1(buf: &[u8]) -> Result<Progress, PeekError> {
    let line = match request_line(buf) {
        Scan::Partial => return Ok(Progress::NeedMore),
        Scan::Mismatch => return Ok(Progress::Done(Peeked::Unknown)),
        Scan::Match(line) => line,
    };
    let HeaderSection::Complete { host } = header_section(line.fields)? else {
        return Ok(Progress::NeedMore);
    };
    let name = target_authority(line.method, line.target)?.or(host);
    authority_name(name)
        .map(|name| Progress::Done(Peeked::Http1(name)))
        .map_err(PeekError::Http1)
}

/// `method SP request-target SP HTTP/1.d CRLF`, decided byte by byte so that bytes of another
/// protocol are Unknown as soon as they diverge. A bare LF ends the line too (RFC 9112 §2.2).
fn request_line(buf: &[u8]) -> Scan<RequestLine<'_>> {
    let method_len = buf.iter().position(|&b| !is_tchar(b)).unwrap_or(buf.len());
    if method_len > MAX_METHOD_LEN {
        return Scan::Mismatch;
    }
    let (method, rest) = buf.split_at_checked(method_len).unwrap_or((buf, &[]));
    if rest.is_empty() {
        return Scan::Partial;
    }
    if method.is_empty() {
        return Scan::Mismatch;
    }
    let rest = match literal(rest, b" ") {
        Scan::Match(rest) => rest,
        Scan::Partial => return Scan::Partial,
        Scan::Mismatch => return Scan::Mismatch,
    };
    // The request-target is visible ASCII (RFC 3986); where it ends, a space must follow.
    let target_len = rest
        .iter()
        .position(|b| !b.is_ascii_graphic())
        .unwrap_or(rest.len());
    let (target, rest) = rest.split_at_checked(target_len).unwrap_or((rest, &[]));
    if rest.is_empty() {
        return Scan::Partial;
    }
    if target.is_empty() {
        return Scan::Mismatch;
    }
    let rest = match literal(rest, b" HTTP/1.") {
        Scan::Match(rest) => rest,
        Scan::Partial => return Scan::Partial,
        Scan::Mismatch => return Scan::Mismatch,
    };
    let fields = match rest {
        [] => return Scan::Partial,
        [minor, ..] if !minor.is_ascii_digit() => return Scan::Mismatch,
        [_] | [_, b'\r'] => return Scan::Partial,
        [_, b'\n', fields @ ..] | [_, b'\r', b'\n', fields @ ..] => fields,
        _ => return Scan::Mismatch,
    };
    Scan::Match(RequestLine {
        method,
        target,
        fields,
    })
}

/// `expected` at the start of `input`, or as much of it as has arrived.
fn literal<'a>(input: &'a [u8], expected: &[u8]) -> Scan<&'a [u8]> {
    if let Some(rest) = input.strip_prefix(expected) {
        Scan::Match(rest)
    } else if expected.starts_with(input) {
        Scan::Partial
    } else {
        Scan::Mismatch
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads the field lines up to the empty line that ends the head, and the Host among them.
/// Each complete line is checked as it arrives, so a broken head is refused without waiting
/// for its end.
fn header_section(mut rest: &[u8]) -> Result<HeaderSection<'_>, PeekError> {
    let mut host = None;
    loop {
        let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(HeaderSection::Partial);
        };
        let (line, next) = rest.split_at_checked(eol).unwrap_or((rest, &[]));
        let next = next.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(HeaderSection::Complete { host });
        }
        let (name, value) = field_line(line)?;
        if name.eq_ignore_ascii_case(b"host") && host.replace(value).is_some() {
            // RFC 9112 §3.2: a request with more than one Host must be refused.
            return Err(PeekError::Http1("more than one Host header"));
        }
        rest = next;
    }
}

/// One `name: value` field line, without its line ending; the value with its optional
/// whitespace trimmed.
fn field_line(line: &[u8]) -> Result<(&[u8], &[u8]), PeekError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obs-fold; refused rather than unfolded, as servers disagree on it.
        return Err(PeekError::Http1("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(PeekError::Http1("header line without a colon"))?;
    let (name, value) = line.split_at_checked(colon).unwrap_or((line, &[]));
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        // Includes whitespace before the colon, which RFC 9112 §5.1 says to refuse.
        return Err(PeekError::Http1("invalid header name"));
    }
    let value = trim_ows(value.get(1..).unwrap_or_default());
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        // NUL, a bare CR, DEL...: RFC 9110 §5.5.
        return Err(PeekError::Http1("control character in a header value"));
    }
    Ok((name, value))
}

/// Strips optional whitespace (SP and HTAB only, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The authority a request-target carries, which wins over Host (RFC 9112 §3.2.2, §3.2.3):
/// CONNECT's `host:port`, or an absolute-form target's authority. Origin form (`/path`) and
/// asterisk form (`*`) carry none.
fn target_authority<'a>(method: &[u8], target: &'a [u8]) -> Result<Option<&'a [u8]>, PeekError> {
    if method == b"CONNECT" {
        if target.contains(&b'/') {
            return Err(PeekError::Http1("CONNECT target is not host:port"));
        }
        return Ok(Some(target));
    }
    if target.starts_with(b"/") || target == b"*" {
        return Ok(None);
    }
    let colon = target
        .iter()
        .position(|&b| b == b':')
        .ok_or(PeekError::Http1("request-target in no known form"))?;
    let (scheme, rest) = target.split_at_checked(colon).unwrap_or((target, &[]));
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid_scheme {
        return Err(PeekError::Http1("request-target in no known form"));
    }
    let Some(rest) = rest.strip_prefix(b"://") else {
        return Err(PeekError::Http1(
            "absolute-form target without an authority",
        ));
    };
    let end = rest
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(rest.len());
    match rest.get(..end) {
        Some(authority) if !authority.is_empty() => Ok(Some(authority)),
        _ => Err(PeekError::Http1(
            "absolute-form target with an empty authority",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

/// RFC 9113 §3.4: what a client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the client never saw the server's SETTINGS (no
/// byte reached the server yet), so it may not send larger frames.
const MAX_FRAME_LEN: usize = 1 << 14;
/// SETTINGS_HEADER_TABLE_SIZE's initial value, for the same reason.
const HEADER_TABLE_SIZE: usize = 4096;
/// A bound on the decoded header list (RFC 9113 §6.5.2 sizes), about what common servers
/// accept; indexed fields make it grow faster than the bytes that encode it.
const MAX_HEADER_LIST_SIZE: usize = 64 * 1024;
/// RFC 7541 §4.1 / RFC 9113 §6.5.2: each field counts 32 octets beyond its name and value.
const FIELD_OVERHEAD: usize = 32;

const FRAME_DATA: u8 = 0;
const FRAME_HEADERS: u8 = 1;
const FRAME_PRIORITY: u8 = 2;
const FRAME_RST_STREAM: u8 = 3;
const FRAME_SETTINGS: u8 = 4;
const FRAME_PUSH_PROMISE: u8 = 5;
const FRAME_PING: u8 = 6;
const FRAME_GOAWAY: u8 = 7;
const FRAME_WINDOW_UPDATE: u8 = 8;
const FRAME_CONTINUATION: u8 = 9;

const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// HTTP/2 after the preface: skips connection-level frames up to the first HEADERS, gathers
/// its CONTINUATIONs, and reads `:authority` from the complete header block.
fn peek_http2(mut rest: &[u8]) -> Result<Progress, PeekError> {
    // The first HEADERS frame's stream and header block, while CONTINUATIONs complete it.
    let mut pending: Option<(u32, Vec<u8>)> = None;
    loop {
        let Some((&header, after)) = rest.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(Progress::NeedMore);
        };
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = header;
        let len = u24([l0, l1, l2]);
        // The reserved high bit is ignored (RFC 9113 §4.1).
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        // Everything the header tells is checked before waiting for the payload.
        check_frame(pending.as_ref().map(|&(open, _)| open), kind, len, stream)?;
        let Some((payload, next)) = after.split_at_checked(len) else {
            return Ok(Progress::NeedMore);
        };
        match (kind, &mut pending) {
            (FRAME_HEADERS, None) => {
                let fragment = header_block_fragment(flags, payload)?;
                if flags & FLAG_END_HEADERS != 0 {
                    return request_authority(fragment);
                }
                pending = Some((stream, fragment.to_vec()));
            }
            (FRAME_CONTINUATION, Some((_, block))) => {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    return request_authority(block);
                }
            }
            // SETTINGS, PING, WINDOW_UPDATE, PRIORITY, and extension frames, which RFC 9113
            // §5.5 says to ignore (the server ignores them too, so they cannot carry a name).
            _ => {}
        }
        rest = next;
    }
}

/// What a frame header may be at this point of the connection: refused are the frames that
/// can only follow a request (DATA, RST_STREAM, PUSH_PROMISE from a client, GOAWAY), anything
/// but a CONTINUATION of the same stream inside a header block, and sizes the frame type
/// forbids.
fn check_frame(pending: Option<u32>, kind: u8, len: usize, stream: u32) -> Result<(), PeekError> {
    let error = match (pending, kind) {
        (Some(open), FRAME_CONTINUATION) if stream == open => None,
        (Some(_), _) => Some("header block interrupted before END_HEADERS"),
        (None, FRAME_CONTINUATION) => Some("CONTINUATION without HEADERS"),
        (None, FRAME_DATA | FRAME_RST_STREAM | FRAME_PUSH_PROMISE | FRAME_GOAWAY) => {
            Some("DATA, RST_STREAM, PUSH_PROMISE or GOAWAY before the first HEADERS")
        }
        (None, FRAME_HEADERS) if stream == 0 || stream & 1 == 0 => {
            // RFC 9113 §5.1.1: clients open odd-numbered streams.
            Some("HEADERS on a stream a client cannot open")
        }
        (None, FRAME_SETTINGS) if stream != 0 || len.checked_rem(6) != Some(0) => {
            Some("SETTINGS frame of wrong stream or size")
        }
        (None, FRAME_PING) if stream != 0 || len != 8 => Some("PING frame of wrong stream or size"),
        (None, FRAME_WINDOW_UPDATE) if len != 4 => Some("WINDOW_UPDATE frame of wrong size"),
        (None, FRAME_PRIORITY) if stream == 0 || len != 5 => {
            Some("PRIORITY frame of wrong stream or size")
        }
        (None, _) => None,
    };
    if len > MAX_FRAME_LEN {
        return Err(PeekError::Http2("frame larger than 16384 bytes"));
    }
    error.map_or(Ok(()), |e| Err(PeekError::Http2(e)))
}

/// The header block fragment of a HEADERS payload, without its padding and priority fields
/// (RFC 9113 §6.2).
fn header_block_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], PeekError> {
    let (pad_len, rest) = if flags & FLAG_PADDED != 0 {
        let (&pad_len, rest) = payload
            .split_first()
            .ok_or(PeekError::Http2("PADDED HEADERS without a pad length"))?;
        (usize::from(pad_len), rest)
    } else {
        (0, payload)
    };
    let rest = if flags & FLAG_PRIORITY != 0 {
        // Stream dependency (4 bytes) and weight (1): irrelevant to the name.
        rest.get(5..).ok_or(PeekError::Http2(
            "HEADERS too short for its priority fields",
        ))?
    } else {
        rest
    };
    rest.len()
        .checked_sub(pad_len)
        .and_then(|end| rest.get(..end))
        .ok_or(PeekError::Http2("HEADERS padding longer than its payload"))
}

/// The first of a field's values and how many there were.
#[derive(Default)]
struct Seen {
    first: Option<Vec<u8>>,
    count: usize,
}

impl Seen {
    fn add(&mut self, value: &[u8]) {
        self.count = self.count.saturating_add(1);
        if self.first.is_none() {
            self.first = Some(value.to_vec());
        }
    }
}

/// Decodes the first request's header block and returns its `:authority`, or `host`.
fn request_authority(block: &[u8]) -> Result<Progress, PeekError> {
    let mut decoder = hpack::Decoder::new(HEADER_TABLE_SIZE);
    let mut list_size = 0usize;
    let (mut authority, mut host) = (Seen::default(), Seen::default());
    decoder.decode(block, |name, value| {
        list_size = list_size
            .saturating_add(name.len())
            .saturating_add(value.len())
            .saturating_add(FIELD_OVERHEAD);
        // Field names are lowercase in HTTP/2 (RFC 9113 §8.2.1); any case is counted here so
        // that a server lenient about case cannot read a name this parser skipped.
        if name.eq_ignore_ascii_case(b":authority") {
            authority.add(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            host.add(value);
        }
    })?;
    if list_size > MAX_HEADER_LIST_SIZE {
        return Err(PeekError::Http2("header list larger than 64 KiB"));
    }
    if authority.count > 1 {
        return Err(PeekError::Http2("more than one :authority"));
    }
    if host.count > 1 {
        return Err(PeekError::Http2("more than one host header"));
    }
    let name = match (authority.first, host.first) {
        // RFC 9113 §8.3.1: a host that differs from :authority makes the request malformed.
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(&h) => {
            return Err(PeekError::Http2("host header differs from :authority"));
        }
        (Some(a), _) => Some(a),
        (None, h) => h,
    };
    authority_name(name.as_deref())
        .map(|name| Progress::Done(Peeked::Http2(name)))
        .map_err(PeekError::Http2)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use std::{
        io::{ErrorKind, Read},
        net::TcpListener,
        process::{Command, Stdio},
        thread::sleep,
        time::{Duration, Instant},
    };

    use super::*;

    fn done(p: Peeked) -> Result<Progress, PeekError> {
        Ok(Progress::Done(p))
    }

    fn some(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    /// Every strict prefix of `bytes` needs more, and the whole decides `expected`.
    fn assert_decides_only_when_whole(bytes: &[u8], expected: Peeked) {
        for end in 0..bytes.len() {
            assert_eq!(
                peek(&bytes[..end]),
                Ok(Progress::NeedMore),
                "prefix of {end} of {} bytes",
                bytes.len()
            );
        }
        assert_eq!(peek(bytes), done(expected));
    }

    // --- TLS builders ---------------------------------------------------------------------

    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// One extension: type, length, data.
    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        [&kind.to_be_bytes()[..], &u16_be(data.len()), data].concat()
    }

    /// A server_name extension listing `(name_type, name)` entries.
    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|&(kind, name)| [&[kind][..], &u16_be(name.len()), name].concat())
            .collect();
        ext(0, &[&u16_be(list.len())[..], &list].concat())
    }

    fn sni(host: &str) -> Vec<u8> {
        sni_ext(&[(0, host.as_bytes())])
    }

    /// supported_versions: TLS 1.3 and 1.2.
    fn versions() -> Vec<u8> {
        ext(43, &[4, 3, 4, 3, 3])
    }

    /// A key_share with one `size`-byte share of X25519MLKEM768 (0x11ec), post-quantum sized.
    fn big_key_share(size: usize) -> Vec<u8> {
        let share = [&[0x11, 0xec][..], &u16_be(size), &vec![0x42; size]].concat();
        ext(51, &[&u16_be(share.len())[..], &share].concat())
    }

    /// A ClientHello body: legacy version, random, session id, cipher suites, compression,
    /// extensions.
    fn hello_body(extensions: &[Vec<u8>]) -> Vec<u8> {
        let extensions = extensions.concat();
        [
            &[0x03, 0x03][..],
            &[0x5a; 32],
            &[32],
            &[0xa5; 32],
            &[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f],
            &[0x01, 0x00],
            &u16_be(extensions.len()),
            &extensions,
        ]
        .concat()
    }

    /// A handshake message: type, 24-bit length, body.
    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        [&[kind][..], &len[1..], body].concat()
    }

    fn client_hello(extensions: &[Vec<u8>]) -> Vec<u8> {
        handshake(1, &hello_body(extensions))
    }

    /// `message` in handshake records, split at `cuts` (offsets into the message).
    fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(message.len());
        bounds
            .windows(2)
            .flat_map(|w| {
                let fragment = &message[w[0]..w[1]];
                [&[22, 3, 1][..], &u16_be(fragment.len()), fragment].concat()
            })
            .collect()
    }

    fn tls_to(host: &str) -> Vec<u8> {
        records(&client_hello(&[versions(), sni(host)]), &[])
    }

    // --- TLS ------------------------------------------------------------------------------

    #[test]
    fn tls_sni_is_read_raw() {
        assert_eq!(
            peek(&tls_to("Example.COM.")),
            done(Peeked::Tls(some("Example.COM.")))
        );
    }

    #[test]
    fn tls_without_sni_has_no_name() {
        let bytes = records(&client_hello(&[versions()]), &[]);
        assert_eq!(peek(&bytes), done(Peeked::Tls(None)));
        // No extension block at all (an old client).
        let mut body = hello_body(&[]);
        body.truncate(body.len() - 2);
        assert_eq!(
            peek(&records(&handshake(1, &body), &[])),
            done(Peeked::Tls(None))
        );
        // A server_name with another name type only.
        let other = records(&client_hello(&[sni_ext(&[(7, b"x")])]), &[]);
        assert_eq!(peek(&other), done(Peeked::Tls(None)));
    }

    #[test]
    fn tls_sni_after_extensions_tls_parser_cannot_read_is_found() {
        // A key_share whose inner lengths are nonsense: tls-parser's own walk would stop here.
        let odd = ext(51, &[0xff, 0xff, 0x00]);
        let bytes = records(&client_hello(&[odd, sni("late.example")]), &[]);
        assert_eq!(peek(&bytes), done(Peeked::Tls(some("late.example"))));
    }

    #[test]
    fn tls_large_hello_over_one_two_and_three_records_needs_every_byte() {
        let message = client_hello(&[versions(), big_key_share(2000), sni("pq.example")]);
        assert!(message.len() > 1500, "{}", message.len());
        let third = message.len() / 3;
        // Cuts inside the handshake header and right after it too.
        for cuts in [
            vec![],
            vec![message.len() / 2],
            vec![third, 2 * third],
            vec![2, 600],
            vec![4, 5, 1800],
        ] {
            let bytes = records(&message, &cuts);
            assert_decides_only_when_whole(&bytes, Peeked::Tls(some("pq.example")));
        }
    }

    #[test]
    fn tls_other_records_before_the_hello_completes_are_refused() {
        let message = client_hello(&[sni("a.example")]);
        let first = records(&message[..20], &[]);
        for other in [20u8, 21, 23] {
            let bytes = [&first[..], &[other, 3, 3, 0, 2, 1, 0]].concat();
            let err = peek(&bytes).unwrap_err();
            assert_eq!(err.kind(), "tls_malformed", "{err}");
            // Refused from the record's first byte.
            assert_eq!(peek(&bytes[..first.len() + 1]), Err(err));
        }
        // A record of another major version.
        let bytes = [&first[..], &[22, 2, 0, 0, 2, 1, 0]].concat();
        assert!(peek(&bytes).is_err());
        // A first record type other than handshake is not TLS at all (nor anything else).
        assert_eq!(peek(&[23, 3, 3, 0, 1, 0]), done(Peeked::Unknown));
        assert_eq!(peek(&[22, 2]), done(Peeked::Unknown));
    }

    #[test]
    fn tls_server_hello_and_other_handshakes_are_refused() {
        let server_hello = records(&handshake(2, &hello_body(&[])), &[]);
        assert_eq!(
            peek(&server_hello),
            Err(PeekError::Tls(
                "first handshake message is not a ClientHello"
            ))
        );
        // Known from the handshake type byte alone.
        assert!(peek(&server_hello[..6]).is_err());
        assert!(peek(&records(&handshake(11, &[0; 8]), &[])).is_err());
    }

    #[test]
    fn tls_record_lengths_are_bounded() {
        assert!(peek(&[22, 3, 1, 0, 0]).is_err());
        assert_eq!(peek(&[22, 3, 1, 0x48, 0x00, 1]), Ok(Progress::NeedMore));
        let err = peek(&[22, 3, 1, 0x48, 0x01]).unwrap_err();
        assert_eq!(err, PeekError::Tls("record longer than 2^14 + 2048 bytes"));
    }

    #[test]
    fn tls_inconsistent_lengths_are_refused() {
        let good = hello_body(&[sni("a.example")]);
        let ext_len_at = 2 + 32 + 1 + 32 + 8 + 2;
        // Extension block length one more than present.
        let mut longer = good.clone();
        longer[ext_len_at + 1] += 1;
        // Extension block length one less: a byte left over.
        let mut shorter = good.clone();
        shorter[ext_len_at + 1] -= 1;
        // The server_name extension's length beyond the block.
        let mut ext_over = good.clone();
        ext_over[ext_len_at + 5] += 1;
        // The server_name list length one short of the extension data.
        let mut list_short = good.clone();
        list_short[ext_len_at + 7] -= 1;
        // The host_name length longer than the list.
        let mut name_long = good.clone();
        name_long[ext_len_at + 10] += 1;
        // Session id length above 32.
        let mut sid = good.clone();
        sid[34] = 33;
        // Odd cipher suites length.
        let mut ciphers = good.clone();
        ciphers[2 + 32 + 1 + 32 + 1] = 5;
        for (what, body) in [
            ("longer", longer),
            ("shorter", shorter),
            ("ext_over", ext_over),
            ("list_short", list_short),
            ("name_long", name_long),
            ("sid", sid),
            ("ciphers", ciphers),
        ] {
            let err = peek(&records(&handshake(1, &body), &[])).unwrap_err();
            assert_eq!(err.kind(), "tls_malformed", "{what}: {err}");
        }
    }

    #[test]
    fn tls_ambiguous_or_invalid_names_are_refused() {
        let two_names = sni_ext(&[(0, b"a.example"), (0, b"b.example")]);
        let two_exts = [sni("a.example"), sni("b.example")];
        for extensions in [
            vec![two_names],
            two_exts.to_vec(),
            vec![sni_ext(&[(0, b"\xff\xfe.example")])],
            vec![sni_ext(&[(0, b"")])],
            vec![ext(0, &[])],
        ] {
            let bytes = records(&client_hello(&extensions), &[]);
            assert_eq!(peek(&bytes).unwrap_err().kind(), "tls_malformed");
        }
    }

    // --- HTTP/1 ---------------------------------------------------------------------------

    fn http1(head: &str) -> Result<Progress, PeekError> {
        peek(head.as_bytes())
    }

    #[test]
    fn http1_host_is_read_raw() {
        let get = "GET /index.html HTTP/1.1\r\nUser-Agent: t\r\nHost: example.com\r\n\r\n";
        assert_eq!(http1(get), done(Peeked::Http1(some("example.com"))));
        let port = "POST /x HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(http1(port), done(Peeked::Http1(some("Example.com:8080"))));
        let v6 = "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n";
        assert_eq!(http1(v6), done(Peeked::Http1(some("[2001:db8::1]:80"))));
    }

    #[test]
    fn http1_header_name_is_case_insensitive_and_value_trimmed() {
        for head in [
            "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHOST: a.example\r\n\r\n",
            "GET / HTTP/1.1\r\nhOsT:\t a.example \t\r\n\r\n",
        ] {
            assert_eq!(
                http1(head),
                done(Peeked::Http1(some("a.example"))),
                "{head:?}"
            );
        }
    }

    #[test]
    fn http1_without_host_has_no_name() {
        assert_eq!(
            http1("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            done(Peeked::Http1(None))
        );
        assert_eq!(http1("GET / HTTP/1.1\r\n\r\n"), done(Peeked::Http1(None)));
        assert_eq!(
            http1("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            done(Peeked::Http1(None))
        );
    }

    #[test]
    fn http1_duplicate_host_is_refused() {
        let err = http1("GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n");
        assert_eq!(err, Err(PeekError::Http1("more than one Host header")));
        // Refused as soon as the second line is complete, before the head ends.
        let early = http1("GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n");
        assert_eq!(early.unwrap_err().kind(), "http1_malformed");
    }

    #[test]
    fn http1_target_authority_wins_over_host() {
        let absolute = "GET http://target.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        assert_eq!(
            http1(absolute),
            done(Peeked::Http1(some("target.example:8080")))
        );
        let no_path = "GET https://t.example HTTP/1.1\r\n\r\n";
        assert_eq!(http1(no_path), done(Peeked::Http1(some("t.example"))));
        let query = "GET http://q.example?x=/ HTTP/1.1\r\n\r\n";
        assert_eq!(http1(query), done(Peeked::Http1(some("q.example"))));
        let connect = "CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n";
        assert_eq!(
            http1(connect),
            done(Peeked::Http1(some("tunnel.example:443")))
        );
        let asterisk = "OPTIONS * HTTP/1.1\r\nHost: o.example\r\n\r\n";
        assert_eq!(http1(asterisk), done(Peeked::Http1(some("o.example"))));
        for bad in [
            "GET http://user@evil.example/ HTTP/1.1\r\n\r\n",
            "GET http:///p HTTP/1.1\r\n\r\n",
            "GET urn:x HTTP/1.1\r\n\r\n",
            "GET 1http://a/ HTTP/1.1\r\n\r\n",
            "GET example.com HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(http1(bad).unwrap_err().kind(), "http1_malformed", "{bad}");
        }
    }

    #[test]
    fn http1_head_split_at_every_byte() {
        for head in [
            "GET /a HTTP/1.1\r\nHost: split.example\r\nAccept: */*\r\n\r\n",
            // Bare LF line endings (RFC 9112 §2.2 allows accepting them).
            "GET /a HTTP/1.1\nHost: split.example\n\n",
        ] {
            assert_decides_only_when_whole(head.as_bytes(), Peeked::Http1(some("split.example")));
        }
    }

    /// Bytes that break the request line are Unknown, not errors: the line is what says the
    /// client speaks HTTP/1 at all, so bytes that fail it could be any protocol (rule 1), and
    /// the proxy denies them as "no name" all the same. Past a valid request line, the client
    /// has shown it speaks HTTP/1, and broken rules are errors.
    #[test]
    fn http1_junk_in_the_request_line_is_unknown() {
        for junk in [
            &b"GE\x01T / HTTP/1.1\r\n"[..],
            b"G(T / HTTP/1.1\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET /\x7f HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.x\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET / http/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\r\nGET / HTTP/1.1\r\n",
            b"\x00",
            b" GET",
        ] {
            assert_eq!(peek(junk), done(Peeked::Unknown), "{junk:?}");
        }
        // A 33-character method is Unknown before any space arrives; 32 may still be HTTP/1.
        assert_eq!(peek(&[b'A'; 33]), done(Peeked::Unknown));
        assert_eq!(peek(&[b'A'; 32]), Ok(Progress::NeedMore));
        let long_method = format!("{} / HTTP/1.1\r\nHost: m\r\n\r\n", "M".repeat(32));
        assert_eq!(http1(&long_method), done(Peeked::Http1(some("m"))));
    }

    #[test]
    fn http1_broken_field_lines_are_errors() {
        for bad in [
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\u{e9}.example\r\n\r\n",
        ] {
            assert_eq!(http1(bad).unwrap_err().kind(), "http1_malformed", "{bad:?}");
        }
    }

    // --- HTTP/2 builders ------------------------------------------------------------------

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        [&len[1..], &[kind, flags], &stream.to_be_bytes(), payload].concat()
    }

    /// The preface and a client SETTINGS frame, then `frames`.
    fn h2(frames: &[Vec<u8>]) -> Vec<u8> {
        let settings = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100, 0, 4, 0, 0xff, 0xff, 0xff]);
        [H2_PREFACE.to_vec(), settings, frames.concat()].concat()
    }

    /// A HEADERS frame on stream 1 with END_HEADERS and END_STREAM.
    fn headers(block: &[u8]) -> Vec<u8> {
        frame(FRAME_HEADERS, FLAG_END_HEADERS | 0x1, 1, block)
    }

    /// `:method: GET`, `:scheme: http`, `:path: /` from the static table.
    const GET: [u8; 3] = [0x82, 0x86, 0x84];

    /// Literal without indexing, literal name, no Huffman (RFC 7541 §6.2.2).
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let (n, v) = (name.len() as u8, value.len() as u8);
        [&[0x00, n][..], name.as_bytes(), &[v], value.as_bytes()].concat()
    }

    /// Literal without indexing of a static-table name (4-bit prefix index), no Huffman.
    fn literal_indexed_name(index: u8, value: &str) -> Vec<u8> {
        let prefix = if index < 15 {
            vec![index]
        } else {
            vec![0x0f, index - 15]
        };
        [&prefix[..], &[value.len() as u8], value.as_bytes()].concat()
    }

    /// RFC 7541 C.4.1: `:authority: www.example.com`, Huffman-coded, incrementally indexed.
    const HUFFMAN_AUTHORITY: [u8; 14] = [
        0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ];

    // --- HTTP/2 ---------------------------------------------------------------------------

    #[test]
    fn h2_authority_literal() {
        let block = [&GET[..], &literal(":authority", "h2.example:8443")].concat();
        let bytes = h2(&[headers(&block)]);
        assert_eq!(peek(&bytes), done(Peeked::Http2(some("h2.example:8443"))));
        // With the static :authority name (index 1).
        let block = [&GET[..], &literal_indexed_name(1, "s.example")].concat();
        assert_eq!(
            peek(&h2(&[headers(&block)])),
            done(Peeked::Http2(some("s.example")))
        );
    }

    #[test]
    fn h2_authority_huffman() {
        let block = [&GET[..], &HUFFMAN_AUTHORITY].concat();
        let bytes = h2(&[headers(&block)]);
        assert_eq!(peek(&bytes), done(Peeked::Http2(some("www.example.com"))));
        // The whole RFC 7541 C.4.1 block.
        let rfc = [0x82, 0x86, 0x84].iter().chain(&HUFFMAN_AUTHORITY).copied();
        let bytes = h2(&[headers(&rfc.collect::<Vec<_>>())]);
        assert_eq!(peek(&bytes), done(Peeked::Http2(some("www.example.com"))));
    }

    #[test]
    fn h2_grpc_request() {
        let block = [
            &[0x83, 0x86][..],
            &literal(":path", "/pkg.Greeter/SayHello"),
            &literal(":authority", "grpc.example:50051"),
            &literal("content-type", "application/grpc"),
            &literal("te", "trailers"),
        ]
        .concat();
        let bytes = h2(&[headers(&block), frame(0, 1, 1, &[0, 0, 0, 0, 0])]);
        assert_eq!(
            peek(&bytes),
            done(Peeked::Http2(some("grpc.example:50051")))
        );
    }

    #[test]
    fn h2_padded_and_priority_headers() {
        let block = [&GET[..], &literal(":authority", "pad.example")].concat();
        let payload = [&[4u8][..], &[0x80, 0, 0, 3, 15], &block, &[0; 4]].concat();
        let flags = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY;
        let bytes = h2(&[frame(FRAME_HEADERS, flags, 1, &payload)]);
        assert_eq!(peek(&bytes), done(Peeked::Http2(some("pad.example"))));
        // PADDED alone.
        let payload = [&[2u8][..], &block, &[0; 2]].concat();
        let bytes = h2(&[frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &payload,
        )]);
        assert_eq!(peek(&bytes), done(Peeked::Http2(some("pad.example"))));
        // Padding longer than what is left.
        let payload = [&[200u8][..], &block].concat();
        let bytes = h2(&[frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &payload,
        )]);
        assert_eq!(
            peek(&bytes),
            Err(PeekError::Http2("HEADERS padding longer than its payload"))
        );
    }

    #[test]
    fn h2_headers_and_continuations() {
        let block = [
            &GET[..],
            &literal("user-agent", "test"),
            &literal(":authority", "cont.example"),
        ]
        .concat();
        // Split inside the :authority value.
        let cut = block.len() - 4;
        let bytes = h2(&[
            frame(FRAME_HEADERS, 0x1, 3, &block[..5]),
            frame(FRAME_CONTINUATION, 0, 3, &block[5..cut]),
            frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &block[cut..]),
        ]);
        assert_decides_only_when_whole(&bytes, Peeked::Http2(some("cont.example")));
        // A CONTINUATION of another stream, or another frame inside the block.
        for interruption in [
            frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, &block[5..]),
            frame(FRAME_SETTINGS, 0, 0, &[]),
            frame(FRAME_HEADERS, FLAG_END_HEADERS, 5, &block),
        ] {
            let bytes = h2(&[frame(FRAME_HEADERS, 0, 3, &block[..5]), interruption]);
            assert_eq!(
                peek(&bytes),
                Err(PeekError::Http2(
                    "header block interrupted before END_HEADERS"
                ))
            );
        }
        let orphan = h2(&[frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, &block)]);
        assert_eq!(peek(&orphan).unwrap_err().kind(), "http2_malformed");
    }

    #[test]
    fn h2_host_fallback_and_no_name() {
        let host = [&GET[..], &literal_indexed_name(38, "host.example")].concat();
        assert_eq!(
            peek(&h2(&[headers(&host)])),
            done(Peeked::Http2(some("host.example")))
        );
        let literal_host = [&GET[..], &literal("host", "lit.example")].concat();
        assert_eq!(
            peek(&h2(&[headers(&literal_host)])),
            done(Peeked::Http2(some("lit.example")))
        );
        let same = [
            &GET[..],
            &literal(":authority", "same.example"),
            &literal("host", "SAME.example"),
        ]
        .concat();
        assert_eq!(
            peek(&h2(&[headers(&same)])),
            done(Peeked::Http2(some("same.example")))
        );
        let none = [&GET[..], &literal("accept", "*/*")].concat();
        assert_eq!(peek(&h2(&[headers(&none)])), done(Peeked::Http2(None)));
    }

    #[test]
    fn h2_ambiguous_names_are_refused() {
        for block in [
            [
                &GET[..],
                &literal(":authority", "a.example"),
                &literal("host", "b.example"),
            ]
            .concat(),
            [
                &GET[..],
                &literal(":authority", "a.example"),
                &literal(":authority", "a.example"),
            ]
            .concat(),
            [
                &GET[..],
                &literal("host", "a.example"),
                &literal("host", "a.example"),
            ]
            .concat(),
            [&GET[..], &literal(":authority", "user@a.example")].concat(),
            [&GET[..], &literal(":authority", "a .example")].concat(),
        ] {
            let err = peek(&h2(&[headers(&block)])).unwrap_err();
            assert_eq!(err.kind(), "http2_malformed", "{err}");
        }
    }

    #[test]
    fn h2_connection_frames_before_headers_are_skipped() {
        let block = [&GET[..], &literal(":authority", "skip.example")].concat();
        let bytes = h2(&[
            frame(FRAME_WINDOW_UPDATE, 0, 0, &[0, 0xef, 0, 1]),
            frame(FRAME_PING, 0, 0, &[1; 8]),
            frame(FRAME_PRIORITY, 0, 3, &[0, 0, 0, 0, 200]),
            frame(FRAME_SETTINGS, 1, 0, &[]),
            // An extension frame type (PRIORITY_UPDATE, RFC 9218): ignored as RFC 9113 §5.5 says.
            frame(0x10, 0, 0, &[0, 0, 0, 1, b'u', b'=', b'1']),
            headers(&block),
        ]);
        assert_decides_only_when_whole(&bytes, Peeked::Http2(some("skip.example")));
    }

    #[test]
    fn h2_frames_that_need_a_request_first_are_refused() {
        for (kind, stream) in [
            (FRAME_DATA, 1),
            (FRAME_RST_STREAM, 1),
            (FRAME_PUSH_PROMISE, 1),
            (FRAME_GOAWAY, 0),
        ] {
            let bytes = h2(&[frame(kind, 0, stream, &[0; 8])]);
            let err = peek(&bytes).unwrap_err();
            assert_eq!(err.kind(), "http2_malformed");
            // Refused from the frame header alone.
            assert_eq!(peek(&bytes[..bytes.len() - 8]), Err(err));
        }
    }

    #[test]
    fn h2_frame_rules_are_checked() {
        let block = [&GET[..], &literal(":authority", "a")].concat();
        for bad in [
            frame(FRAME_HEADERS, FLAG_END_HEADERS, 0, &block),
            frame(FRAME_HEADERS, FLAG_END_HEADERS, 2, &block),
            frame(FRAME_SETTINGS, 0, 1, &[]),
            frame(FRAME_SETTINGS, 0, 0, &[0; 5]),
            frame(FRAME_PING, 0, 0, &[0; 7]),
            frame(FRAME_WINDOW_UPDATE, 0, 0, &[0; 3]),
            frame(FRAME_PRIORITY, 0, 0, &[0; 5]),
            frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_PRIORITY, 1, &[0; 4]),
            frame(0x10, 0, 0, &vec![0; MAX_FRAME_LEN + 1]),
        ] {
            assert_eq!(peek(&h2(&[bad])).unwrap_err().kind(), "http2_malformed");
        }
    }

    #[test]
    fn h2_undecodable_header_block_is_an_hpack_error() {
        for block in [
            vec![0x82, 0xbe],             // dynamic index 62 in an empty table
            vec![0x80],                   // index 0
            vec![0x82, 0x41, 0x85, 0xff], // Huffman string cut short
            vec![0x82, 0x20],             // size update after a field
            vec![0x3f, 0xe2, 0x1f],       // size update to 4097
            vec![0x41, 0x81, 0x00],       // Huffman padding of zeros
        ] {
            let err = peek(&h2(&[headers(&block)])).unwrap_err();
            assert_eq!(err.kind(), "hpack", "{block:x?}: {err}");
        }
    }

    #[test]
    fn h2_amplified_header_list_is_bounded() {
        // A 4000-byte value indexed once, then referenced 17 times: ~68 KiB from ~4 KiB.
        let value = "v".repeat(4000);
        let first = [&[0x40, 1, b'x', 0x7f][..], &[0xa1, 0x1e], value.as_bytes()].concat();
        let block = [&first[..], &[0xbe; 17], &literal(":authority", "a")].concat();
        assert_eq!(
            peek(&h2(&[headers(&block)])),
            Err(PeekError::Http2("header list larger than 64 KiB"))
        );
    }

    #[test]
    fn h2_every_prefix_needs_more() {
        let block = [&GET[..], &HUFFMAN_AUTHORITY, &literal("accept", "*/*")].concat();
        assert_decides_only_when_whole(
            &h2(&[headers(&block)]),
            Peeked::Http2(some("www.example.com")),
        );
    }

    // --- Detection ------------------------------------------------------------------------

    #[test]
    fn detection_waits_only_while_a_protocol_is_possible() {
        assert_eq!(peek(&[]), Ok(Progress::NeedMore));
        assert_eq!(peek(&[22]), Ok(Progress::NeedMore));
        assert_eq!(peek(&[22, 3]), Ok(Progress::NeedMore));
        for end in 1..H2_PREFACE.len() {
            assert_eq!(peek(&H2_PREFACE[..end]), Ok(Progress::NeedMore), "{end}");
        }
        assert_eq!(peek(H2_PREFACE), Ok(Progress::NeedMore));
        // A diverging preface is read as HTTP/1 with version 2.0: Unknown.
        assert_eq!(peek(b"PRI * HTTP/2.0\r\n\r\nXM"), done(Peeked::Unknown));
        assert_eq!(peek(b"G"), Ok(Progress::NeedMore));
        assert_eq!(peek(b"GET /path HTTP/1."), Ok(Progress::NeedMore));
        for other in [
            &[0x80, 0x2e, 0x01][..],
            b"\x05\x01\x00",
            b"{\"json\":1}",
            b"\xff",
        ] {
            assert_eq!(peek(other), done(Peeked::Unknown), "{other:?}");
        }
    }

    // --- Robustness -----------------------------------------------------------------------

    fn samples() -> Vec<Vec<u8>> {
        let hello = client_hello(&[versions(), big_key_share(1200), sni("s.example")]);
        let block = [
            &GET[..],
            &HUFFMAN_AUTHORITY,
            &literal("host", "www.example.com"),
        ]
        .concat();
        vec![
            tls_to("a.example"),
            records(&hello, &[3, 700]),
            records(&client_hello(&[versions()]), &[]),
            b"GET http://a.example/ HTTP/1.1\r\nHost: b\r\nX: y\r\n\r\n".to_vec(),
            b"CONNECT c:443 HTTP/1.1\nHost: c:443\n\n".to_vec(),
            h2(&[headers(&block)]),
            h2(&[
                frame(FRAME_PING, 0, 0, &[0; 8]),
                frame(
                    FRAME_HEADERS,
                    FLAG_PADDED | FLAG_PRIORITY,
                    1,
                    &[1, 0, 0, 0, 0, 9, 0x82, 0],
                ),
                frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, &block),
            ]),
        ]
    }

    /// xorshift64: a deterministic generator, enough to vary inputs without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Only the absence of a panic is asserted here (and that nothing random is mistaken
    /// for a name-carrying protocol without looking like one): every prefix of every sample,
    /// thousands of mutated samples, and random bytes behind prefixes that steer them into
    /// each parser.
    #[test]
    fn never_panics_on_prefixes_mutations_and_random_bytes() {
        let samples = samples();
        for sample in &samples {
            for end in 0..=sample.len() {
                let _ = peek(&sample[..end]);
            }
        }
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4000 {
            let mut bytes = samples[rng.below(samples.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes[at] ^= 1 << rng.below(8),
                    1 => bytes[at] = rng.next() as u8,
                    2 => bytes.truncate(at),
                    _ => {
                        let n = rng.below(16);
                        let junk = rng.bytes(n);
                        bytes.splice(at..at, junk);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let _ = peek(&bytes);
        }
        let steers: [&[u8]; 6] = [
            b"",
            &[22, 3, 1],
            &[22, 3, 1, 0x10, 0x00, 1, 0, 0x0f, 0xfc],
            H2_PREFACE,
            b"GET ",
            b"GET / HTTP/1.1\r\n",
        ];
        for _ in 0..4000 {
            let steer = steers[rng.below(steers.len())];
            let len = rng.below(300);
            let bytes = [steer, &rng.bytes(len)].concat();
            let result = peek(&bytes);
            if steer.is_empty() && bytes.first().is_some_and(|&b| b != 22 && !is_tchar(b)) {
                assert_eq!(result, done(Peeked::Unknown));
            }
        }
    }

    // --- Real clients ---------------------------------------------------------------------

    /// Runs `program` against a listener on 127.0.0.1 and returns what `peek` made of the
    /// first bytes it sent, or None (skipped) when the program is not installed.
    fn capture(
        program: &str,
        args: impl Fn(u16) -> Vec<String>,
    ) -> Option<Result<Progress, PeekError>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spawned = Command::new(program)
            .args(args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("skipped: {program} is not installed");
                return None;
            }
            spawned => spawned.unwrap(),
        };
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break Ok(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    sleep(Duration::from_millis(20));
                }
                Err(e) => break Err(e),
            }
        };
        let result = accepted.map(|mut stream| {
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                let progress = peek(&buf);
                if progress != Ok(Progress::NeedMore) {
                    break progress;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break progress,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let _ = child.kill();
        let _ = child.wait();
        Some(result.unwrap())
    }

    #[test]
    fn real_openssl_client_hello() {
        let Some(result) = capture("openssl", |port| {
            [
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "example.com",
            ]
            .map(String::from)
            .to_vec()
        }) else {
            return;
        };
        assert_eq!(result, done(Peeked::Tls(some("example.com"))));
    }

    fn curl(port: u16, extra: &[&str]) -> Vec<String> {
        let url = format!("http://127.0.0.1:{port}/");
        ["-s", "--noproxy", "*", "--max-time", "5"]
            .iter()
            .chain(extra)
            .chain([&url.as_str()])
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn real_curl_h2_prior_knowledge() {
        let Some(result) = capture("curl", |port| {
            curl(port, &["--http2-prior-knowledge", "-H", "Host: h2.example"])
        }) else {
            return;
        };
        assert_eq!(result, done(Peeked::Http2(some("h2.example"))));
    }

    #[test]
    fn real_curl_http1() {
        let Some(result) = capture("curl", |port| curl(port, &["-H", "Host: h1.example"])) else {
            return;
        };
        assert_eq!(result, done(Peeked::Http1(some("h1.example"))));
    }
}
