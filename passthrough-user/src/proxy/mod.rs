//! The peek proxy: Domain entries are decided from the name the client sends (TLS SNI,
//! HTTP/1 Host, HTTP/2 `:authority`) before a byte reaches the destination.
//!
//! - [`peek`]: pure parsers that read that name from the client's first bytes.
//! - [`hpack`]: the HPACK (RFC 7541) decoder that reads an HTTP/2 request's header block.
//! - [`server`]: the proxy itself: accept, peek, decide, splice or refuse.
//! - [`resolve`]: the names Domain entries allow, resolved, for the name to address binding.
//! - [`origin`]: where a redirected connection was going (`REDIRECTS`, `sock_diag`).
//! - [`netns`]: listeners and upstream sockets inside pods' network namespaces.
//! - [`splice`]: zero-copy forwarding of an allowed connection.

pub mod hpack;
pub mod netns;
pub mod origin;
pub mod peek;
pub mod resolve;
pub mod server;
pub mod splice;
