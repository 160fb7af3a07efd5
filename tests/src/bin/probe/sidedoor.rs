//! What does not go through `connect()`: UDP datagrams, DNS queries, raw IP, ping and packet
//! sockets, and a capture on the far side that reports what arrived.
//!
//! - `probe udp [--cgroup DIR] [--netns PATH] [--connected] [--v4mapped] ADDR:PORT` sends one
//!   datagram (to an address, or on a connected socket) and prints the outcome.
//! - `probe dns [--cgroup DIR] [--netns PATH] SERVER:PORT NAME` asks for NAME's A record and
//!   prints the answer's addresses.
//! - `probe raw [--cgroup DIR] [--netns PATH] --kind tcp-syn|icmp-echo|ping|packet
//!   [--iface IF] ADDR:PORT` sends a hand-made TCP SYN or ICMP echo from a raw IP socket, an
//!   ICMP echo from a ping socket, or an Ethernet frame (IP + UDP) from a packet socket.
//! - `probe capture --netns PATH --iface IF` prints `ready`, then one JSON line per IP packet
//!   arriving on IF (`{"ip":4,"proto":6,"src":...,"dst":...,"dport":...}`) until killed.
//!
//! Every outcome is a JSON line `{"ok":true}` or `{"ok":false,"stage":...,"errno":...}`.

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use serde_json::json;

use super::{enter, parse, parse_addr, sockaddr, usage};

/// What every side-door probe sends: recognisable on the far side.
const PAYLOAD: &[u8] = b"passthrough side door";

fn raw_socket(family: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the OwnedFd on success.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn family_of(dest: SocketAddr) -> i32 {
    if dest.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn sendto(fd: &OwnedFd, bytes: &[u8], dest: Option<SocketAddr>) -> io::Result<()> {
    let rc = match dest {
        Some(d) => {
            let (ss, len) = sockaddr(d);
            // SAFETY: `ss` holds `len` valid bytes of a sockaddr for the call's duration.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    std::ptr::from_ref(&ss).cast(),
                    len,
                )
            }
        }
        // SAFETY: a plain send on a connected socket.
        None => unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) },
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn connect(fd: &OwnedFd, dest: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(dest);
    // SAFETY: as in `sendto`.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn report(outcome: Result<serde_json::Value, (&'static str, io::Error)>) {
    let line = match outcome {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v["pid"] = json!(std::process::id());
            v
        }
        Err((stage, e)) => json!({
            "ok": false,
            "pid": std::process::id(),
            "stage": stage,
            "errno": e.raw_os_error().unwrap_or(0),
            "error": e.to_string(),
        }),
    };
    println!("{line}");
}

fn at(stage: &'static str) -> impl FnOnce(io::Error) -> (&'static str, io::Error) {
    move |e| (stage, e)
}

// ---------------------------------------------------------------------------------------
// udp, dns

pub fn udp_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(args, &["--cgroup", "--netns", "--connected", "--v4mapped"])?;
    let [dest] = o.positional.as_slice() else {
        return Err(usage());
    };
    let mut dest = parse_addr(dest)?;
    if o.v4mapped {
        let SocketAddr::V4(v4) = dest else {
            return Err("--v4mapped needs an IPv4 destination".into());
        };
        dest = SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0));
    }
    enter(&o)?;
    let outcome = (|| {
        let fd = raw_socket(family_of(dest), libc::SOCK_DGRAM, 0).map_err(at("socket"))?;
        if o.connected {
            connect(&fd, dest).map_err(at("connect"))?;
            sendto(&fd, PAYLOAD, None).map_err(at("send"))?;
        } else {
            sendto(&fd, PAYLOAD, Some(dest)).map_err(at("send"))?;
        }
        Ok(json!({}))
    })();
    report(outcome);
    Ok(())
}

/// A DNS query for `name`'s A record, id 0x5054.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x50, 0x54, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The A records of a DNS answer (name compression: answers point back at the question).
fn answer_addresses(a: &[u8]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let count = |i: usize| usize::from(u16::from_be_bytes([a[i], a[i + 1]]));
    if a.len() < 12 {
        return out;
    }
    let (qd, an) = (count(4), count(6));
    let mut i = 12;
    let skip_name = |mut i: usize| {
        while i < a.len() {
            let l = a[i];
            if l == 0 {
                return i + 1;
            }
            if l & 0xc0 == 0xc0 {
                return i + 2;
            }
            i += 1 + usize::from(l);
        }
        i
    };
    for _ in 0..qd {
        i = skip_name(i) + 4;
    }
    for _ in 0..an {
        i = skip_name(i);
        if i + 10 > a.len() {
            break;
        }
        let (ty, len) = (count(i), count(i + 8));
        i += 10;
        if ty == 1 && len == 4 && i + 4 <= a.len() {
            out.push(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
        }
        i += len;
    }
    out
}

pub fn dns_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(args, &["--cgroup", "--netns"])?;
    let [server, name] = o.positional.as_slice() else {
        return Err(usage());
    };
    let server = parse_addr(server)?;
    enter(&o)?;
    let outcome = (|| {
        let fd = raw_socket(family_of(server), libc::SOCK_DGRAM, 0).map_err(at("socket"))?;
        sendto(&fd, &dns_query(name), Some(server)).map_err(at("send"))?;
        let socket = std::net::UdpSocket::from(fd);
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(at("recv"))?;
        let mut buf = [0u8; 1500];
        let n = socket.recv(&mut buf).map_err(at("recv"))?;
        let addrs: Vec<String> = answer_addresses(&buf[..n])
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(json!({ "addresses": addrs }))
    })();
    report(outcome);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// raw, ping, packet

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP header with SYN set, to `port`.
fn tcp_syn(port: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    h[2..4].copy_from_slice(&port.to_be_bytes());
    h[4..8].copy_from_slice(&0x5054_0001u32.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    h
}

/// An ICMP (v4: type 8) or ICMPv6 (type 128) echo request with the payload. The kernel
/// computes ICMPv6 checksums itself.
fn echo_request(v6: bool) -> Vec<u8> {
    let mut m = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0x50, 0x54, 0, 1];
    m.extend_from_slice(PAYLOAD);
    if !v6 {
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m
}

/// An Ethernet broadcast frame carrying an IP packet (v4 or v6) with a UDP datagram from
/// `src` to `dest`.
fn frame(src: IpAddr, dest: SocketAddr) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_000u16.to_be_bytes());
    udp.extend_from_slice(&dest.port().to_be_bytes());
    udp.extend_from_slice(&u16::try_from(8 + PAYLOAD.len()).unwrap_or(0).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(PAYLOAD);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0x50, 0x54]);
    match (src, dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&u16::try_from(20 + udp.len()).unwrap_or(0).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&u16::try_from(udp.len()).unwrap_or(0).to_be_bytes());
            f.extend_from_slice(&[17, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => {}
    }
    f.extend_from_slice(&udp);
    f
}

fn ifindex(iface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// A packet socket bound to `iface`, for every protocol (`ETH_P_ALL`).
fn packet_socket(iface: &str) -> Result<OwnedFd, (&'static str, io::Error)> {
    let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
    let fd = raw_socket(libc::AF_PACKET, libc::SOCK_RAW, proto).map_err(at("socket"))?;
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex(iface).map_err(at("bind"))?).unwrap_or(0);
    // SAFETY: `sll` is a valid sockaddr_ll for the call's duration.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(("bind", io::Error::last_os_error()));
    }
    Ok(fd)
}

pub fn raw_cmd(args: &[String]) -> Result<(), String> {
    let mut rest = Vec::new();
    let mut kind = None;
    let mut iface = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kind" => kind = it.next().cloned(),
            "--iface" => iface = it.next().cloned(),
            _ => rest.push(a.clone()),
        }
    }
    let o = parse(&rest, &["--cgroup", "--netns"])?;
    let [dest] = o.positional.as_slice() else {
        return Err(usage());
    };
    let dest = parse_addr(dest)?;
    let kind = kind.ok_or("--kind is required")?;
    enter(&o)?;
    let v6 = dest.is_ipv6();
    let family = family_of(dest);
    let outcome = (|| {
        match kind.as_str() {
            "tcp-syn" => {
                let fd =
                    raw_socket(family, libc::SOCK_RAW, libc::IPPROTO_TCP).map_err(at("socket"))?;
                sendto(
                    &fd,
                    &tcp_syn(dest.port()),
                    Some(SocketAddr::new(dest.ip(), 0)),
                )
                .map_err(at("send"))?;
            }
            "icmp-echo" => {
                let proto = if v6 {
                    libc::IPPROTO_ICMPV6
                } else {
                    libc::IPPROTO_ICMP
                };
                let fd = raw_socket(family, libc::SOCK_RAW, proto).map_err(at("socket"))?;
                sendto(&fd, &echo_request(v6), Some(SocketAddr::new(dest.ip(), 0)))
                    .map_err(at("send"))?;
            }
            "ping" => {
                let proto = if v6 {
                    libc::IPPROTO_ICMPV6
                } else {
                    libc::IPPROTO_ICMP
                };
                let fd = raw_socket(family, libc::SOCK_DGRAM, proto).map_err(at("socket"))?;
                sendto(&fd, &echo_request(v6), Some(SocketAddr::new(dest.ip(), 0)))
                    .map_err(at("send"))?;
            }
            "packet" => {
                let iface = iface
                    .clone()
                    .ok_or(("socket", io::Error::other("--iface is required")))?;
                let fd = packet_socket(&iface)?;
                let src = if v6 {
                    IpAddr::V6(passthrough_tests::CLIENT_V6)
                } else {
                    IpAddr::V4(passthrough_tests::CLIENT_V4)
                };
                sendto(&fd, &frame(src, dest), None).map_err(at("send"))?;
            }
            other => {
                return Err(("socket", io::Error::other(format!("unknown kind {other}"))));
            }
        }
        Ok(json!({}))
    })();
    report(outcome);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// capture

/// One captured IP packet as a JSON line.
fn describe(frame: &[u8]) -> Option<serde_json::Value> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (version, proto, src, dst, l4): (u8, u8, IpAddr, IpAddr, &[u8]) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (4, *ip.get(9)?, s.into(), d.into(), ip.get(ihl..)?)
        }
        0x86dd => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                6,
                *ip.get(6)?,
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                ip.get(40..)?,
            )
        }
        _ => return None,
    };
    let dport = match proto {
        6 | 17 => Some(u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?])),
        _ => None,
    };
    let payload = l4.windows(PAYLOAD.len()).any(|w| w == PAYLOAD);
    Some(json!({
        "ip": version,
        "proto": proto,
        "src": src.to_string(),
        "dst": dst.to_string(),
        "dport": dport,
        "sideDoorPayload": payload,
    }))
}

pub fn capture_cmd(args: &[String]) -> Result<(), String> {
    let mut rest = Vec::new();
    let mut iface = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--iface" {
            iface = it.next().cloned();
        } else {
            rest.push(a.clone());
        }
    }
    let o = parse(&rest, &["--netns"])?;
    let iface = iface.ok_or("--iface is required")?;
    enter(&o)?;
    let fd = packet_socket(&iface).map_err(|(s, e)| format!("{s}: {e}"))?;
    println!("ready");
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom into buffers we own, at most their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("capture: {e}"));
        }
        // What this side sends (replies, resets) is not what arrived.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let n = usize::try_from(n).unwrap_or(0);
        if let Some(line) = describe(&buf[..n]) {
            println!("{line}");
        }
    }
}
