//! Where a connection the kernel redirected to the proxy was going. The connect program keeps
//! the original destination by the client socket's cookie (`REDIRECTS`); for a connection it
//! accepted, the proxy asks the kernel (`sock_diag`, in the listener's network namespace) for
//! the client end of it, which gives that cookie. Nothing has to run for the workload's other
//! sockets.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use passthrough_common::OrigDst;

use super::netns::Netns;

/// A `sock_diag` socket of one network namespace.
pub struct Diag {
    socket: Mutex<Socket>,
    seq: AtomicU32,
}

impl Diag {
    /// A socket in the agent's own namespace.
    pub fn new() -> io::Result<Self> {
        let socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Self {
            socket: Mutex::new(socket),
            seq: AtomicU32::new(1),
        })
    }

    /// A socket in the namespace `ns` (a pod's): it sees that namespace's sockets.
    pub fn in_netns(ns: &Netns) -> io::Result<Self> {
        ns.within(Self::new)
    }

    /// The cookie of the TCP socket whose local end is `local` and remote end `remote`;
    /// `None` when there is none (any more).
    pub fn cookie(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut id = if local.is_ipv4() {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        id.source_port = local.port();
        id.destination_port = remote.port();
        id.source_address = local.ip();
        id.destination_address = remote.ip();
        // All-ones: "any cookie" (INET_DIAG_NOCOOKIE).
        id.cookie = [0xff; 8];
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: id,
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        socket.send(&buf, 0)?;
        let mut answer = vec![0u8; 8192];
        let n = socket.recv(&mut &mut answer[..], 0)?;
        let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[..n])
            .map_err(|e| io::Error::other(format!("sock_diag answer: {e}")))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                Ok(Some(u64::from_ne_bytes(r.header.socket_id.cookie)))
            }
            NetlinkPayload::Error(e) => match e.code {
                Some(c) if c.get() == -libc::ENOENT => Ok(None),
                _ => Err(e.to_io()),
            },
            _ => Ok(None),
        }
    }
}

/// The kernel's record of redirected connections (`REDIRECTS`).
pub struct Origins {
    redirects: Mutex<BpfHashMap<MapData, u64, OrigDst>>,
}

impl Origins {
    pub fn new(redirects: BpfHashMap<MapData, u64, OrigDst>) -> Self {
        Self {
            redirects: Mutex::new(redirects),
        }
    }

    /// Where the client socket with this cookie was going, if the kernel redirected it.
    pub fn get(&self, cookie: u64) -> Option<OrigDst> {
        self.lock().get(&cookie, 0).ok()
    }

    /// Forgets a connection once it has ended (the entry would otherwise wait for the LRU).
    pub fn forget(&self, cookie: u64) {
        let _ = self.lock().remove(&cookie);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BpfHashMap<MapData, u64, OrigDst>> {
        self.redirects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
