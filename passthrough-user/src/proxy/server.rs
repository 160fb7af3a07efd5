//! The peek proxy's connections: find where the client was going, read the name it asks
//! for, decide with the workload's policy, then splice to the original destination or
//! refuse. Nothing reaches the destination before the decision.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use passthrough_common::unmapped_v4;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{
    netns::Netns,
    origin::{Diag, Origins},
    peek::{Progress, peek},
    resolve::NameResolver,
};
use crate::{
    api::{DecisionKey, EventKind, EventRecord, EventSource, ProxyStats, Verdict as EventVerdict},
    events::{EventLog, rfc3339},
    policy::{
        bind::{Binding, DomainCheck, bind, domain_check_for},
        compile::CompiledPolicy,
        decide::{Action, Peeked, Verdict, decide, peeked_host},
        rules::Rule,
    },
    view::SharedView,
};

/// Where a listener is: a `sock_diag` socket of its namespace (to find the client end of an
/// accepted connection) and, for a pod's namespace, the namespace itself.
struct Place {
    diag: Diag,
    netns: Option<Arc<Netns>>,
}

/// Bounds on what one client may cost the proxy.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub peek_bytes: usize,
    pub peek_timeout: Duration,
    pub max_connections: usize,
}

/// How an allowed name is bound to its addresses (`proxy.domainCheck`, `dns`).
pub struct NameBinding {
    pub check: DomainCheck,
    /// The resolver; `None` only when no entry binds
    /// ([`crate::policy::bind::needs_resolver`]).
    pub resolver: Option<Arc<NameResolver>>,
}

/// How long an allowed connection may take to reach its destination.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer per direction when `splice(2)` is not available.
const SPLICE_BUFFER: usize = 64 * 1024;
/// After a refusal, how long the client's unread bytes are drained so that closing does not
/// reset the connection and destroy the response before the client reads it.
const LINGER: Duration = Duration::from_millis(500);

/// Counters of the proxy, for `/status` and `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// (workload, verdict, deciding entry or reason) -> connections.
    decisions: Mutex<BTreeMap<DecisionKey, u64>>,
    /// Refusals before any decision, by cause (a bound hit, malformed input, ...).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    active: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            active: self.active.load(Ordering::Relaxed),
            decisions: lock(&self.decisions)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            refused: lock(&self.refused)
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
        }
    }

    fn refuse(&self, cause: &'static str) {
        *lock(&self.refused).entry(cause).or_default() += 1;
    }

    fn decided(&self, key: DecisionKey) {
        *lock(&self.decisions).entry(key).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The proxy: shared by every listener and connection.
pub struct Proxy {
    view: SharedView,
    /// The kernel's record of redirected connections (`REDIRECTS`).
    origins: Origins,
    bounds: Bounds,
    slots: Arc<Semaphore>,
    pub stats: Arc<Stats>,
    events: Arc<EventLog>,
    binding: NameBinding,
}

impl Proxy {
    pub fn new(
        view: SharedView,
        origins: Origins,
        bounds: Bounds,
        stats: Arc<Stats>,
        events: Arc<EventLog>,
        binding: NameBinding,
    ) -> Self {
        Self {
            view,
            origins,
            slots: Arc::new(Semaphore::new(bounds.max_connections)),
            bounds,
            stats,
            events,
            binding,
        }
    }

    /// Accepts connections forever. `netns` is the namespace the listener is in when it is
    /// not the agent's own (a pod's): upstream connections are made from there too.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, netns: Option<Arc<Netns>>) {
        let diag = match &netns {
            Some(ns) => Diag::in_netns(ns),
            None => Diag::new(),
        };
        let place = match diag {
            Ok(diag) => Arc::new(Place { diag, netns }),
            Err(e) => {
                tracing::error!("proxy listener: no sock_diag socket in its namespace ({e})");
                return;
            }
        };
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.stats.refuse("max_connections");
                drop(stream);
                continue;
            };
            let proxy = self.clone();
            let place = place.clone();
            tokio::spawn(async move {
                proxy.stats.active.fetch_add(1, Ordering::Relaxed);
                proxy.handle(stream, &place).await;
                proxy.stats.active.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }

    /// The client socket's cookie and where it was going, for a connection the kernel
    /// redirected; `None` for one that came to the proxy port by itself.
    fn original(
        &self,
        client: &TcpStream,
        place: &Place,
    ) -> Option<(u64, passthrough_common::OrigDst)> {
        let (peer, local) = (client.peer_addr().ok()?, client.local_addr().ok()?);
        // The client end: its local address is our peer, its remote address our local one.
        let cookie = match place.diag.cookie(peer, local) {
            Ok(c) => c?,
            Err(e) => {
                tracing::warn!(%peer, "sock_diag lookup failed: {e}");
                return None;
            }
        };
        Some((cookie, self.origins.get(cookie)?))
    }

    async fn handle(&self, client: TcpStream, place: &Place) {
        let Some((cookie, orig)) = self.original(&client, place) else {
            // Something connected to the proxy port directly: there is nothing to decide.
            self.stats.refuse("not_redirected");
            return;
        };
        self.decide_and_forward(client, orig, place).await;
        self.origins.forget(cookie);
    }

    async fn decide_and_forward(
        &self,
        mut client: TcpStream,
        orig: passthrough_common::OrigDst,
        place: &Place,
    ) {
        let dest = SocketAddr::new(
            unmapped_v4(&orig.addr).map_or(IpAddr::from(orig.addr), IpAddr::from),
            orig.port,
        );
        let view = self.view.current();
        let Some(workload) = view.workloads.get(&orig.workload) else {
            // The workload left the config between the connect and the accept.
            self.stats.refuse("unknown_workload");
            return;
        };
        let mut buf = Vec::with_capacity(self.bounds.peek_bytes);
        let peeked = match self.read_name(&mut client, &mut buf).await {
            Ok(p) => p,
            Err(cause) => {
                tracing::info!(workload = %workload.name, %dest, cause, "proxy refused: no name");
                self.stats.refuse(cause);
                return;
            }
        };
        let verdict = decide(&workload.policy, &view.exemptions, dest, Some(&peeked));
        let (verdict, upstream) = self
            .bind_name(&workload.policy, verdict, &peeked, dest)
            .await;
        let rule = describe(&workload.policy, &verdict);
        self.stats.decided(DecisionKey {
            workload: workload.name.clone(),
            verdict: verdict_label(&verdict),
            rule: rule.clone(),
        });
        let name = peeked_name(&peeked);
        self.events.push(EventRecord {
            time: rfc3339(SystemTime::now()),
            source: EventSource::Proxy,
            workload: workload.name.clone(),
            workload_name: workload.label.clone(),
            mesh: workload.mesh.clone(),
            tags: workload.tags.clone(),
            pid: None,
            command: None,
            kind: EventKind::Connect,
            destination: Some(dest),
            socket: None,
            pinned_to: (upstream != dest).then_some(upstream),
            name: (name != "-").then(|| name.to_string()),
            protocol: peeked_protocol(&peeked).map(str::to_string),
            verdict: verdict_label(&verdict),
            reason: verdict.would_deny.unwrap_or(verdict.reason),
            rule: match deciding_entry(&workload.policy, &verdict) {
                Some(e) => entry_name(e),
                None => format!("no entry matched (mode {:?})", workload.policy.mode),
            },
            count: 1,
        });
        if verdict.action != Action::Allow {
            tracing::info!(workload = %workload.name, %dest, name, rule, "proxy denied");
            refuse(&mut client, &peeked).await;
            return;
        }
        tracing::debug!(workload = %workload.name, %dest, %upstream, name, rule, "proxy allowed");
        if let Err(e) = splice(client, upstream, &buf, place.netns.as_deref()).await {
            tracing::debug!(%upstream, "proxied connection ended: {e}");
        }
    }

    /// The name to address binding of a name a Domain entry allowed: where the connection
    /// goes, or the refusal that replaces the verdict. The check is the entry's
    /// ([`domain_check_for`]: `proxy.domainCheck`, except that `*` binds to nothing and Kuma 3
    /// always pins exact names); audit mode reports a refusal and lets it through to the
    /// dialled address.
    async fn bind_name(
        &self,
        policy: &CompiledPolicy,
        verdict: Verdict,
        peeked: &Peeked,
        dest: SocketAddr,
    ) -> (Verdict, SocketAddr) {
        if verdict.action != Action::Allow
            || verdict.reason != passthrough_common::Reason::DomainEntry
        {
            return (verdict, dest);
        }
        let Some(rule) = verdict.rule else {
            return (verdict, dest);
        };
        let Some(pattern) = policy.domain_pattern(rule) else {
            return (verdict, dest);
        };
        let check = domain_check_for(policy.kuma, self.binding.check, pattern);
        if check == DomainCheck::Trust {
            return (verdict, dest);
        }
        let (Some(resolver), Some(name)) = (&self.binding.resolver, peeked_host(peeked)) else {
            // A Domain entry other than `*` only admits a named client, and a resolver exists
            // whenever some entry binds (`needs_resolver`): refuse rather than guess.
            let refused = Verdict::refused(passthrough_common::Reason::DnsNoAddress, Some(rule));
            return (refused.audited(policy.audit), dest);
        };
        let refuse = |reason| Verdict::refused(reason, Some(rule)).audited(policy.audit);
        match resolver.resolve(&name).await {
            Err(e) => (refuse(e.reason()), dest),
            Ok(addrs) => match bind(check, dest, &addrs) {
                Binding::Dialled => (verdict, dest),
                Binding::Pinned(to) => (verdict, to),
                Binding::Mismatch => (
                    refuse(passthrough_common::Reason::NameAddressMismatch),
                    dest,
                ),
            },
        }
    }

    /// Reads until the bytes name a host (or cannot), within the size and time bounds.
    async fn read_name(
        &self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
    ) -> Result<Peeked, &'static str> {
        let deadline = Instant::now() + self.bounds.peek_timeout;
        let mut chunk = vec![0u8; 4096];
        loop {
            match peek(buf) {
                Ok(Progress::Done(p)) => return Ok(p),
                Ok(Progress::NeedMore) => {}
                Err(e) => return Err(e.kind()),
            }
            if buf.len() >= self.bounds.peek_bytes {
                return Err("peek_bytes");
            }
            let room = (self.bounds.peek_bytes - buf.len()).min(chunk.len());
            let read = tokio::time::timeout_at(deadline.into(), client.read(&mut chunk[..room]));
            match read.await {
                Err(_) => return Err("peek_timeout"),
                Ok(Err(_)) => return Err("client_error"),
                Ok(Ok(0)) => return Err("client_closed"),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn verdict_label(v: &Verdict) -> EventVerdict {
    match (v.action, v.would_deny) {
        (Action::Allow, Some(_)) => EventVerdict::WouldDeny,
        (Action::Allow, None) => EventVerdict::Allow,
        _ => EventVerdict::Deny,
    }
}

/// The entry of the merged appendMatch list a verdict names, if any.
fn deciding_entry<'a>(c: &'a CompiledPolicy, v: &Verdict) -> Option<Rule<'a>> {
    v.rule.and_then(|r| c.rules.at(r as usize))
}

/// An entry as `policy/appendMatch[i]`.
fn entry_name(e: Rule<'_>) -> String {
    format!("{}/appendMatch[{}]", e.policy.name, e.index)
}

/// The deciding entry as `policy/appendMatch[i]`, or the reason when no entry decided.
fn describe(c: &CompiledPolicy, v: &Verdict) -> String {
    match deciding_entry(c, v) {
        Some(e) if v.action == Action::Allow && v.would_deny.is_none() => entry_name(e),
        _ => v.would_deny.unwrap_or(v.reason).name().to_string(),
    }
}

fn peeked_protocol(p: &Peeked) -> Option<&'static str> {
    match p {
        Peeked::Tls(_) => Some("tls"),
        Peeked::Http1(_) => Some("http"),
        Peeked::Http2(_) => Some("http2"),
        Peeked::Unknown => None,
    }
}

fn peeked_name(p: &Peeked) -> &str {
    match p {
        Peeked::Tls(n) | Peeked::Http1(n) | Peeked::Http2(n) => n.as_deref().unwrap_or("-"),
        Peeked::Unknown => "-",
    }
}

/// Tells the client no, in its own protocol where it has one, then closes without a reset.
async fn refuse(client: &mut TcpStream, peeked: &Peeked) {
    let reply: Vec<u8> = match peeked {
        // A fatal access_denied alert, in a TLS 1.2 record (what a 1.3 server sends before
        // its ServerHello too).
        Peeked::Tls(_) => vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31],
        Peeked::Http1(host) => {
            let body = format!(
                "passthrough: egress to {} is not allowed by MeshPassthrough\n",
                host.as_deref()
                    .unwrap_or("this destination (no Host header)")
            );
            format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Peeked::Http2(host) => h2_goaway(&format!(
            "egress to {} is not allowed by MeshPassthrough",
            host.as_deref().unwrap_or("this destination")
        )),
        Peeked::Unknown => Vec::new(),
    };
    if !reply.is_empty() {
        let _ = client.write_all(&reply).await;
    }
    let _ = client.shutdown().await;
    // Drain what the client already sent, so the close is a FIN and not a reset that could
    // destroy the reply before the client reads it.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// An HTTP/2 server preface (empty SETTINGS) and a GOAWAY with REFUSED_STREAM and `debug`.
fn h2_goaway(debug: &str) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let payload_len = 8 + debug.len();
    out.extend_from_slice(&(payload_len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0x7u32.to_be_bytes());
    out.extend_from_slice(debug.as_bytes());
    out
}

/// Connects to the original destination, replays what the client sent, then forwards both
/// ways until both sides have closed (each direction's end of stream is passed on), with
/// `splice(2)` where the kernel allows it and by copying otherwise.
async fn splice(
    mut client: TcpStream,
    dest: SocketAddr,
    peeked: &[u8],
    netns: Option<&Netns>,
) -> io::Result<()> {
    let connect = async {
        match netns {
            // From the pod's namespace, as the pod's own connect would have been.
            Some(ns) => ns.socket_for(dest)?.connect(dest).await,
            None => TcpStream::connect(dest).await,
        }
    };
    let mut upstream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    upstream.write_all(peeked).await?;
    match super::splice::splice_both(&client, &upstream).await {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // No splice between these descriptors: copy through user space.
            tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await?;
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_is_a_settings_frame_then_a_goaway_frame() {
        let f = h2_goaway("no");
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..12], &[0, 0, 10]);
        assert_eq!(f[12], 7);
        assert_eq!(&f[18..22], &[0, 0, 0, 0]);
        assert_eq!(&f[22..26], &[0, 0, 0, 7]);
        assert_eq!(&f[26..], b"no");
    }
}
