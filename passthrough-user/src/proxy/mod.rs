//! The peek proxy: Domain entries are decided from the name the client sends (TLS SNI,
//! HTTP/1 Host, HTTP/2 `:authority`) before a byte reaches the destination.
//!
//! - [`peek`]: pure parsers that read that name from the client's first bytes.

pub mod peek;
