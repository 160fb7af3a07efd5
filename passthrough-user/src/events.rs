//! The event log: denied connects and connects let through by audit mode (from the kernel's
//! `EVENTS` ring buffer), and every peek proxy decision. Bounded everywhere: a fixed number
//! of recent records, repeated identical events aggregated into one record with a count,
//! and followers that fall behind lose events, counted, instead of holding memory.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use passthrough_common::{Event, Reason, event_kind, unmapped_v4};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
};

use crate::{
    api::{EventCounts, EventKind, EventRecord, EventSource, Verdict},
    view::SharedView,
};

/// Records kept for `passthrough events` and `recommend`.
pub const RECENT: usize = 4096;
/// Identical events within this window of a record's first one only raise its count.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(10);
/// Events a follower may lag behind before it loses some.
const FOLLOW_BUFFER: usize = 1024;

/// `AF_INET SOCK_RAW protocol 6`: a socket's description for events.
pub fn describe_socket(family: u8, sock_type: u8, protocol: u16) -> String {
    let family = match family {
        2 => "AF_INET".to_string(),
        10 => "AF_INET6".to_string(),
        17 => "AF_PACKET".to_string(),
        44 => "AF_XDP".to_string(),
        f => format!("family {f}"),
    };
    let kind = match sock_type {
        1 => "SOCK_STREAM".to_string(),
        2 => "SOCK_DGRAM".to_string(),
        3 => "SOCK_RAW".to_string(),
        t => format!("type {t}"),
    };
    format!("{family} {kind} protocol {protocol}")
}

/// Where the peek proxy's decisions go besides the log: the flow record (`crate::flows`).
pub trait NameSink: Send + Sync {
    fn proxy_decision(&self, record: &EventRecord);
}

pub struct EventLog {
    recent: Mutex<VecDeque<(Instant, EventRecord)>>,
    names: std::sync::OnceLock<Arc<dyn NameSink>>,
    received: AtomicU64,
    follower_dropped: AtomicU64,
    kernel_dropped: Mutex<Option<PerCpuArray<MapData, u64>>>,
    tx: broadcast::Sender<EventRecord>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            names: std::sync::OnceLock::new(),
            received: AtomicU64::new(0),
            follower_dropped: AtomicU64::new(0),
            kernel_dropped: Mutex::new(None),
            tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EventLog {
    /// Records an event: aggregated into the latest identical record of the window, or
    /// kept as a new one (the oldest goes when the log is full). Followers get every event.
    pub fn push(&self, record: EventRecord) {
        self.received.fetch_add(record.count, Ordering::Relaxed);
        if record.source == EventSource::Proxy
            && let Some(names) = self.names.get()
        {
            names.proxy_decision(&record);
        }
        let now = Instant::now();
        {
            let mut recent = lock(&self.recent);
            let hit = recent
                .iter_mut()
                .rev()
                .take_while(|(at, _)| now.duration_since(*at) < AGGREGATE_WINDOW)
                .find(|(_, r)| r.same(&record));
            match hit {
                Some((_, r)) => r.count += record.count,
                None => {
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back((now, record.clone()));
                }
            }
        }
        // No follower is not an error.
        let _ = self.tx.send(record);
    }

    /// The recent records, oldest first, of one workload if given (by cgroup path, or by
    /// name where it has one).
    pub fn recent(&self, workload: Option<&str>) -> Vec<EventRecord> {
        lock(&self.recent)
            .iter()
            .map(|(_, r)| r)
            .filter(|r| workload.is_none_or(|w| r.is_of(w)))
            .cloned()
            .collect()
    }

    /// Sends every peek proxy decision to `sink` too (set once, at start).
    pub fn send_names_to(&self, sink: Arc<dyn NameSink>) {
        let _ = self.names.set(sink);
    }

    pub fn follow(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }

    /// A follower missed `n` events.
    pub fn lagged(&self, n: u64) {
        self.follower_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counts(&self) -> EventCounts {
        let kernel_dropped = lock(&self.kernel_dropped)
            .as_ref()
            .and_then(|m| m.get(&0, 0).ok())
            .map_or(0, |per_cpu| per_cpu.iter().sum());
        EventCounts {
            received: self.received.load(Ordering::Relaxed),
            kernel_dropped,
            follower_dropped: self.follower_dropped.load(Ordering::Relaxed),
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{t:.3}")
}

/// The kernel clock a program's timestamp was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelClock {
    /// `bpf_ktime_get_boot_ns`: `CLOCK_BOOTTIME`.
    Boot,
    /// `bpf_ktime_get_coarse_ns`: `CLOCK_MONOTONIC`, at the last tick.
    MonotonicCoarse,
}

/// Wall-clock time of a `bpf_ktime_get_boot_ns` value.
pub fn wall_time(boot_ns: u64) -> SystemTime {
    wall_time_of(KernelClock::Boot, boot_ns)
}

/// Wall-clock time of a program's timestamp `ns` read from `clock`.
pub fn wall_time_of(clock: KernelClock, ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let id = match clock {
        KernelClock::Boot => libc::CLOCK_BOOTTIME,
        KernelClock::MonotonicCoarse => libc::CLOCK_MONOTONIC_COARSE,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    let now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let ago = now.saturating_sub(Duration::from_nanos(ns));
    SystemTime::now() - ago
}

/// Reads the kernel's events until the ring buffer goes away.
pub async fn read_kernel(
    ring: RingBuf<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    log: Arc<EventLog>,
    view: SharedView,
) {
    *lock(&log.kernel_dropped) = Some(dropped);
    // SAFETY: the AsyncFd owns the ring buffer and with it the fd, which therefore stays
    // open, and is not closed behind tokio's back, for as long as it is registered.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("deny events unavailable: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write exactly one `Event` per entry; read it unaligned.
            let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            log.push(kernel_record(&e, &view));
        }
        guard.clear_ready();
    }
}

fn kernel_record(e: &Event, view: &SharedView) -> EventRecord {
    let view = view.current();
    let w = view.workloads.get(&e.workload);
    let ip = unmapped_v4(&e.addr).map_or(IpAddr::from(e.addr), IpAddr::from);
    // A reason the programs never write would be a bug; name it as the denial it was.
    let reason = Reason::ALL
        .get(usize::from(e.reason))
        .copied()
        .unwrap_or(Reason::NoMatch);
    let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    let mode = w.map_or_else(|| "?".to_string(), |w| format!("{:?}", w.policy.mode));
    let (kind, destination, socket) = match e.kind {
        event_kind::SOCKET => (
            EventKind::Socket,
            None,
            Some(describe_socket(e.family, e.sock_type, e.port)),
        ),
        event_kind::DATAGRAM => (EventKind::Datagram, Some(SocketAddr::new(ip, e.port)), None),
        _ => (EventKind::Connect, Some(SocketAddr::new(ip, e.port)), None),
    };
    let rule = match kind {
        EventKind::Connect => format!("no entry matched (mode {mode})"),
        EventKind::Datagram => "udp: Deny (MeshPassthrough has no UDP entries)".into(),
        EventKind::Socket => "rawSockets or udp: Deny".into(),
    };
    EventRecord {
        time: rfc3339(wall_time(e.boot_ns)),
        source: EventSource::Kernel,
        workload: w.map_or_else(|| format!("cgroup id {}", e.workload), |w| w.name.clone()),
        workload_name: w.and_then(|w| w.label.clone()),
        mesh: w.map_or_else(String::new, |w| w.mesh.clone()),
        tags: w.map(|w| w.tags.clone()).unwrap_or_default(),
        pid: Some((e.pid_tgid >> 32) as u32),
        command: Some(String::from_utf8_lossy(&e.comm[..comm_len]).into_owned()),
        kind,
        destination,
        socket,
        pinned_to: None,
        name: None,
        protocol: None,
        verdict: if e.audit != 0 {
            Verdict::WouldDeny
        } else {
            Verdict::Deny
        },
        reason,
        rule,
        count: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dest: &str) -> EventRecord {
        EventRecord {
            time: "t".into(),
            source: EventSource::Kernel,
            workload: "/w".into(),
            workload_name: Some("shop/web".into()),
            mesh: "default".into(),
            tags: vec![],
            pid: Some(7),
            command: Some("curl".into()),
            kind: EventKind::Connect,
            destination: Some(dest.parse().expect("addr")),
            socket: None,
            pinned_to: None,
            name: None,
            protocol: None,
            verdict: Verdict::Deny,
            reason: Reason::NoMatch,
            rule: "no entry matched (mode Matched)".into(),
            count: 1,
        }
    }

    #[test]
    fn identical_events_aggregate_and_others_do_not() {
        let log = EventLog::default();
        for _ in 0..5 {
            log.push(record("192.0.2.1:80"));
        }
        log.push(record("192.0.2.1:81"));
        let recent = log.recent(None);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].count, 5);
        assert_eq!(recent[1].count, 1);
        assert_eq!(log.counts().received, 6);
        assert!(log.recent(Some("/other")).is_empty());
        assert_eq!(log.recent(Some("shop/web")).len(), 2);
        assert_eq!(log.recent(Some("/w")).len(), 2);
    }

    #[test]
    fn the_log_is_bounded() {
        let log = EventLog::default();
        for port in 0..(RECENT + 10) {
            log.push(record(&format!("192.0.2.1:{}", port % 65_536)));
        }
        let recent = log.recent(None);
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].destination.map(|d| d.port()), Some(10));
    }

    #[test]
    fn a_slow_follower_loses_events_it_is_told_about() {
        let log = EventLog::default();
        let mut rx = log.follow();
        for port in 0..(FOLLOW_BUFFER + 5) {
            log.push(record(&format!("192.0.2.1:{port}")));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
