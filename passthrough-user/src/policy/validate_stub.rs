// TEMPORARY stub while validate.rs is written.
use std::net::IpAddr;
use super::{Violation, model::Policy};
pub fn validate(_p: &Policy) -> Vec<Violation> { Vec::new() }
pub fn parse_ip(s: &str) -> Option<IpAddr> { s.parse().ok() }
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> { let (a, p) = s.split_once('/')?; Some((a.parse().ok()?, p.parse().ok()?)) }
