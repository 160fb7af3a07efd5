//! The flow record: what each workload connected to in the window (`flows.window`), from the
//! kernel's `FLOWS` table (every connect, allowed or denied) and the peek proxy's decisions
//! (the names). The agent reads the kernel table every `flows.interval` and on every
//! `/flows`; this module turns the readings into a bounded history: counts grow by what the
//! kernel counted since the last reading, flows older than the window go, and past
//! `flows.history` the least recently seen go (counted).
//!
//! A kernel entry that was evicted and created again is told apart by its creation time, so
//! its count is never added twice; the history (with the last reading of each kernel entry)
//! is saved to `flows.stateFile` when set, so a restarted agent neither loses the proxy's
//! names nor counts the kernel's entries again.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use passthrough_common::{FlowKey, FlowMemo, FlowValue, Reason, unmapped_v4};
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        AppliedPolicies, AppliedPolicy, EventRecord, EventSource, FlowRecord, FlowSource,
        FlowTableStats, FlowsReport, Verdict,
    },
    events::{KernelClock, NameSink, rfc3339, wall_time_of},
    policy::{decide::decide, document::to_resource},
    view::SharedView,
};

/// What the agent reads from the kernel table.
#[derive(Debug, Default)]
pub struct KernelRead {
    pub entries: Vec<(FlowKey, FlowValue)>,
    /// `FLOW_INSERTS`, summed over CPUs.
    pub inserted: u64,
    pub raced: u64,
}

/// Adds the connects the CPUs' `FLOW_MEMO` slots hold to the `FLOWS` entries they belong
/// to (same key, same `first_ns`), the latest connect's time and reason with them. A slot
/// whose entry is gone (evicted, or re-created since) is left out: the program adds its
/// connects to the table when it next touches the slot, and they are counted then.
pub fn add_pending(entries: &mut HashMap<FlowKey, FlowValue>, slots: &[FlowMemo]) {
    for m in slots {
        if m.first_ns == 0 || m.pending == 0 {
            continue;
        }
        let Some(v) = entries.get_mut(&m.key) else {
            continue;
        };
        if v.first_ns != m.first_ns {
            continue;
        }
        v.count += u64::from(m.pending);
        if m.last_ns >= v.last_ns {
            v.last_ns = m.last_ns;
            v.reason = m.reason;
            v.audit = m.audit;
        }
    }
}

/// The kernel table, as the agent's map handle reads it.
pub trait KernelFlows: Send {
    fn read(&mut self) -> Result<KernelRead, String>;
}

/// `flows` of the agent config, as the record needs it.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enabled: bool,
    pub window: Duration,
    pub capacity: u32,
    pub history: usize,
    pub state_file: Option<PathBuf>,
}

/// What a flow is counted by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Id {
    source: FlowSource,
    workload: String,
    destination: SocketAddr,
    ip_protocol: u16,
    name: Option<String>,
}

/// The last reading of one kernel entry: its creation time and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    first_ns: u64,
    count: u64,
}

/// A kernel key as the state file writes it: (workload, address, port, protocol).
type SavedKey = (u64, [u8; 16], u16, u16);

#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    flows: Vec<FlowRecord>,
    /// Kernel entries -> their last reading.
    kernel: Vec<(SavedKey, Seen)>,
}

#[derive(Default)]
struct State {
    flows: HashMap<Id, FlowRecord>,
    kernel: HashMap<FlowKey, Seen>,
    table: FlowTableStats,
    dropped: u64,
}

/// The agent's flow record. Shared by the reader, the proxy (through the event log) and the
/// admin endpoint; every method is short and takes the one lock briefly.
pub struct FlowLog {
    settings: Settings,
    view: SharedView,
    kernel: Mutex<Option<Box<dyn KernelFlows>>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A kernel key's destination as a socket address (IPv4-mapped addresses as IPv4).
pub fn destination(k: &FlowKey) -> SocketAddr {
    let ip = match unmapped_v4(&k.addr) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(k.addr)),
    };
    SocketAddr::new(ip, k.port)
}

/// The verdict of a connect decided for `reason`, `audit` when audit mode let it through.
fn verdict_of(reason: Reason, audit: bool) -> Verdict {
    if audit {
        Verdict::WouldDeny
    } else if reason.allows() {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

impl FlowLog {
    /// An empty record, or the one saved in `settings.state_file`.
    pub fn new(settings: Settings, view: SharedView) -> Self {
        let mut state = State::default();
        if let Some(path) = &settings.state_file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<History>(&bytes) {
                    Ok(h) => {
                        for r in h.flows {
                            state.flows.insert(id_of(&r), r);
                        }
                        for ((workload, addr, port, protocol), seen) in h.kernel {
                            let key = FlowKey {
                                workload,
                                addr,
                                port,
                                protocol,
                                _pad: [0; 4],
                            };
                            state.kernel.insert(key, seen);
                        }
                        tracing::info!(flows = state.flows.len(), file = %path.display(), "flow history restored");
                    }
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        "flows.stateFile is not a flow history ({e}): starting from the kernel table alone"
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %path.display(), "flows.stateFile: {e}"),
            }
        }
        state.table.enabled = settings.enabled;
        state.table.capacity = settings.capacity;
        Self {
            settings,
            view,
            kernel: Mutex::new(None),
            state: Mutex::new(state),
        }
    }

    /// Gives the record the kernel table to read.
    pub fn attach(&self, kernel: Box<dyn KernelFlows>) {
        *lock(&self.kernel) = Some(kernel);
    }

    /// Reads the kernel table and merges it (blocking: run it off the async runtime).
    pub fn refresh(&self) {
        let read = {
            let mut k = lock(&self.kernel);
            let Some(k) = k.as_mut() else { return };
            match k.read() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}");
                    return;
                }
            }
        };
        self.merge(read, SystemTime::now(), wall_time_of);
        self.save();
    }

    /// Merges one reading of the kernel table, `wall` turning the programs' timestamps into
    /// wall times (`first_ns` is boot time, `last_ns` coarse monotonic time).
    fn merge(
        &self,
        read: KernelRead,
        now: SystemTime,
        wall: impl Fn(KernelClock, u64) -> SystemTime,
    ) {
        let view = self.view.current();
        let horizon = unix_ms(now).saturating_sub(duration_ms(self.settings.window));
        let mut s = lock(&self.state);
        let present = read.entries.len() as u64;
        s.table = FlowTableStats {
            enabled: self.settings.enabled,
            capacity: self.settings.capacity,
            present,
            inserted: read.inserted,
            evicted: read.inserted.saturating_sub(present),
            raced: read.raced,
        };
        let mut kernel = HashMap::with_capacity(read.entries.len());
        for (k, v) in &read.entries {
            // A reading may miss connects on their way from a CPU's memo slot to the table
            // (never count them twice): an entry's count only ever rises, so a lower
            // reading than the last is that, and the connects are counted when they show.
            let (delta, count) = match s.kernel.get(k) {
                Some(seen) if seen.first_ns == v.first_ns => {
                    (v.count.saturating_sub(seen.count), v.count.max(seen.count))
                }
                _ => (v.count, v.count),
            };
            kernel.insert(
                *k,
                Seen {
                    first_ns: v.first_ns,
                    count,
                },
            );
            let last = unix_ms(wall(KernelClock::MonotonicCoarse, v.last_ns));
            if delta == 0 || last < horizon {
                continue;
            }
            let Some(reason) = Reason::ALL.get(usize::from(v.reason)).copied() else {
                continue;
            };
            let dest = destination(k);
            let w = view.workloads.get(&k.workload);
            let rule = w.and_then(|w| {
                let d = decide(&w.policy, &view.exemptions, dest, None);
                (d.would_deny.unwrap_or(d.reason) == reason && reason != Reason::ToProxy)
                    .then(|| d.rule.and_then(|r| w.policy.rules.at(r as usize)))
                    .flatten()
                    .map(|e| format!("{}/appendMatch[{}]", e.policy.name, e.index))
            });
            let record = FlowRecord {
                source: FlowSource::Kernel,
                workload: w.map_or_else(|| format!("cgroup id {}", k.workload), |w| w.name.clone()),
                workload_name: w.and_then(|w| w.label.clone()),
                identity: w.map(|w| w.identity.clone()),
                destination: dest,
                ip_protocol: k.protocol,
                name: None,
                protocol: None,
                verdict: verdict_of(reason, v.audit != 0),
                reason,
                rule,
                count: delta,
                first: rfc3339(wall(KernelClock::Boot, v.first_ns)),
                last: rfc3339(wall(KernelClock::MonotonicCoarse, v.last_ns)),
                last_unix_ms: last,
            };
            upsert(&mut s.flows, record);
        }
        s.kernel = kernel;
        self.age(&mut s, horizon);
    }

    /// Drops what is older than the window, then the least recently seen past the bound.
    fn age(&self, s: &mut State, horizon: u64) {
        s.flows.retain(|_, r| r.last_unix_ms >= horizon);
        let over = s.flows.len().saturating_sub(self.settings.history);
        if over > 0 {
            let mut by_age: Vec<(u64, Id)> = s
                .flows
                .iter()
                .map(|(id, r)| (r.last_unix_ms, id.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(t, _)| *t);
            for (_, id) in by_age.into_iter().take(over) {
                s.flows.remove(&id);
            }
            s.dropped += over as u64;
        }
    }

    fn save(&self) {
        let Some(path) = &self.settings.state_file else {
            return;
        };
        let history = {
            let s = lock(&self.state);
            History {
                flows: s.flows.values().cloned().collect(),
                kernel: s
                    .kernel
                    .iter()
                    .map(|(k, v)| ((k.workload, k.addr, k.port, k.protocol), *v))
                    .collect(),
            }
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&history)
            .map_err(|e| e.to_string())
            .and_then(|bytes| std::fs::write(&tmp, bytes).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), "flows.stateFile not written: {e}");
        }
    }

    /// The kernel table's state as of the last reading.
    pub fn table(&self) -> FlowTableStats {
        lock(&self.state).table
    }

    /// The record, of one workload if given, of the flows seen since `since_ms` if given.
    pub fn report(&self, workload: Option<&str>, since_ms: Option<u64>) -> FlowsReport {
        let view = self.view.current();
        let s = lock(&self.state);
        let mut flows: Vec<FlowRecord> = s
            .flows
            .values()
            .filter(|r| workload.is_none_or(|w| r.is_of(w)))
            .filter(|r| since_ms.is_none_or(|t| r.last_unix_ms >= t))
            .cloned()
            .collect();
        flows.sort_by(|a, b| {
            (&a.workload, a.destination, &a.name, a.source).cmp(&(
                &b.workload,
                b.destination,
                &b.name,
                b.source,
            ))
        });
        let a = &view.applied;
        FlowsReport {
            generated: rfc3339(SystemTime::now()),
            window_secs: self.settings.window.as_secs(),
            table: s.table,
            history_entries: s.flows.len(),
            history_capacity: self.settings.history,
            history_dropped: s.dropped,
            applied: AppliedPolicies {
                kuma: a.kuma,
                system_namespace: a.system_namespace.clone(),
                default_mode_none: a.default_none,
                mesh_cidrs: view.exemptions.mesh_cidrs.clone(),
                policies: a
                    .policies
                    .iter()
                    .map(|p| AppliedPolicy {
                        source: p.source.clone(),
                        resource: to_resource(p),
                    })
                    .collect(),
            },
            flows,
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn id_of(r: &FlowRecord) -> Id {
    Id {
        source: r.source,
        workload: r.workload.clone(),
        destination: r.destination,
        ip_protocol: r.ip_protocol,
        name: r.name.clone(),
    }
}

/// Adds a reading to the flow it is of: counts add up, the latest connect describes it.
fn upsert(flows: &mut HashMap<Id, FlowRecord>, new: FlowRecord) {
    match flows.entry(id_of(&new)) {
        std::collections::hash_map::Entry::Occupied(mut o) => {
            let r = o.get_mut();
            r.count += new.count;
            if new.last_unix_ms >= r.last_unix_ms {
                let (count, first) = (r.count, r.first.clone());
                *r = FlowRecord {
                    count,
                    first,
                    ..new
                };
            }
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(new);
        }
    }
}

impl NameSink for FlowLog {
    /// A peek proxy decision: the name the client sent, counted under its destination.
    fn proxy_decision(&self, e: &EventRecord) {
        let (EventSource::Proxy, Some(destination)) = (e.source, e.destination) else {
            return;
        };
        let view = self.view.current();
        let identity = view
            .workloads
            .values()
            .find(|w| w.name == e.workload)
            .map(|w| w.identity.clone());
        let last = unix_ms(SystemTime::now());
        let record = FlowRecord {
            source: FlowSource::Proxy,
            workload: e.workload.clone(),
            workload_name: e.workload_name.clone(),
            identity,
            destination,
            ip_protocol: 6,
            name: e.name.clone(),
            protocol: e.protocol.clone(),
            verdict: e.verdict,
            reason: e.reason,
            rule: e.rule.contains("/appendMatch[").then(|| e.rule.clone()),
            count: e.count,
            first: e.time.clone(),
            last: e.time.clone(),
            last_unix_ms: last,
        };
        let mut s = lock(&self.state);
        upsert(&mut s.flows, record);
        let horizon = last.saturating_sub(duration_ms(self.settings.window));
        if s.flows.len() > self.settings.history {
            self.age(&mut s, horizon);
        }
    }
}

/// A shared record, as the agent hands it around.
pub type SharedFlows = Arc<FlowLog>;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(history: usize) -> Settings {
        Settings {
            enabled: true,
            window: Duration::from_secs(3600),
            capacity: 16,
            history,
            state_file: None,
        }
    }

    fn key(last: u8, port: u16) -> FlowKey {
        FlowKey {
            workload: 7,
            addr: passthrough_common::v4_mapped([203, 0, 113, last]),
            port,
            protocol: 6,
            _pad: [0; 4],
        }
    }

    fn value(first_ns: u64, count: u64, last_ns: u64) -> FlowValue {
        FlowValue {
            count,
            first_ns,
            last_ns,
            reason: Reason::NoMatch as u8,
            audit: 0,
            _pad: [0; 6],
        }
    }

    /// Boot time 0 is one hour ago plus a minute; boot ns are seconds here.
    fn wall(now: SystemTime) -> impl Fn(KernelClock, u64) -> SystemTime {
        move |_, ns| now - Duration::from_secs(3660) + Duration::from_secs(ns)
    }

    fn counts(log: &FlowLog) -> Vec<(SocketAddr, u64)> {
        log.report(None, None)
            .flows
            .iter()
            .map(|r| (r.destination, r.count))
            .collect()
    }

    #[test]
    fn readings_add_what_the_kernel_counted_since_and_a_recreated_entry_counts_anew() {
        let log = FlowLog::new(settings(100), crate::view::channel().1);
        let now = SystemTime::now();
        let read = |entries: Vec<(FlowKey, FlowValue)>, inserted| KernelRead {
            entries,
            inserted,
            raced: 0,
        };
        log.merge(
            read(vec![(key(10, 443), value(100, 3, 200))], 1),
            now,
            wall(now),
        );
        log.merge(
            read(vec![(key(10, 443), value(100, 5, 300))], 1),
            now,
            wall(now),
        );
        assert_eq!(
            counts(&log),
            [("203.0.113.10:443".parse().expect("addr"), 5)]
        );
        // Evicted, then created again by 2 connects: 2 more, not 2 - 5.
        log.merge(
            read(vec![(key(10, 443), value(400, 2, 400))], 3),
            now,
            wall(now),
        );
        assert_eq!(
            counts(&log),
            [("203.0.113.10:443".parse().expect("addr"), 7)]
        );
        let t = log.table();
        assert_eq!((t.present, t.inserted, t.evicted), (1, 3, 2));
        let r = &log.report(None, None).flows[0];
        assert_eq!(
            (r.verdict, r.workload.as_str()),
            (Verdict::Deny, "cgroup id 7")
        );
    }

    #[test]
    fn flows_older_than_the_window_and_past_the_bound_go() {
        let log = FlowLog::new(settings(2), crate::view::channel().1);
        let now = SystemTime::now();
        let entries = vec![
            (key(1, 1), value(1, 1, 10)), // 59 minutes before the window's start: gone
            (key(2, 2), value(1, 1, 100)),
            (key(3, 3), value(1, 1, 200)),
            (key(4, 4), value(1, 1, 300)),
        ];
        log.merge(
            KernelRead {
                entries,
                inserted: 4,
                raced: 0,
            },
            now,
            wall(now),
        );
        let kept: Vec<u16> = counts(&log).iter().map(|(d, _)| d.port()).collect();
        assert_eq!(kept, [3, 4]);
        assert_eq!(log.report(None, None).history_dropped, 1);
    }

    fn slot(k: FlowKey, first_ns: u64, pending: u32, last_ns: u64) -> FlowMemo {
        FlowMemo {
            busy: 0,
            pending,
            reason: Reason::IpEntry as u8,
            audit: 0,
            _pad: [0; 2],
            key: k,
            first_ns,
            flushed_ns: 0,
            last_ns,
        }
    }

    #[test]
    fn memo_slots_add_to_their_own_entry_only() {
        let mut entries: HashMap<FlowKey, FlowValue> = [
            (key(1, 443), value(100, 3, 200)),
            (key(2, 443), value(500, 1, 500)),
        ]
        .into_iter()
        .collect();
        add_pending(
            &mut entries,
            &[
                // Two CPUs' slots for the first flow: both add, the later one's reason wins.
                slot(key(1, 443), 100, 4, 250),
                slot(key(1, 443), 100, 2, 240),
                // A slot of an entry since re-created (first_ns 400, now 500): left out.
                slot(key(2, 443), 400, 9, 600),
                // A slot whose entry is gone, and a free one: left out.
                slot(key(3, 443), 100, 5, 600),
                slot(key(1, 443), 0, 5, 600),
            ],
        );
        let one = entries[&key(1, 443)];
        assert_eq!((one.count, one.last_ns), (9, 250));
        assert_eq!(one.reason, Reason::IpEntry as u8);
        assert_eq!(entries[&key(2, 443)].count, 1);
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn a_reading_that_missed_connects_in_flight_counts_them_once_later() {
        let log = FlowLog::new(settings(100), crate::view::channel().1);
        let now = SystemTime::now();
        let read = |count| KernelRead {
            entries: vec![(key(10, 443), value(100, count, 200))],
            inserted: 1,
            raced: 0,
        };
        // 8 (5 in the table, 3 in a slot); then 6 (the slot's 3 on their way: missed);
        // then 10: 10 in all, not 12.
        for c in [8, 6, 10] {
            log.merge(read(c), now, wall(now));
        }
        assert_eq!(
            counts(&log),
            [("203.0.113.10:443".parse().expect("addr"), 10)]
        );
    }
}
