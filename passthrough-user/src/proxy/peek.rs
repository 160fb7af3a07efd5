//! Reads the name a client asks for from its first bytes (placeholder, being written).
