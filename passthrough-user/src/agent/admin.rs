//! The admin endpoint: `GET /ready`, `GET /status` (JSON), `GET /metrics` (Prometheus),
//! `GET /events[?workload=W][&follow]`, `GET /flows[?workload=W][&since=UNIX_MS]` (JSON). It answers from the core's latest snapshot plus the
//! live counters, so no request waits for a reconcile.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::broadcast};

use super::{maps::Counters, snapshot::Snapshot};
use crate::{
    api::{EventRecord, Status},
    events::EventLog,
    flows::FlowLog,
    proxy::server::Stats as ProxyStats,
};

/// What the endpoint reads: the snapshot, and the counters that move between passes.
#[derive(Clone)]
pub struct Admin {
    pub snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub counters: Arc<Counters>,
    pub proxy: Option<Arc<ProxyStats>>,
    pub events: Arc<EventLog>,
    pub flows: Arc<FlowLog>,
}

impl Admin {
    /// The latest snapshot's status with the counters as they are now.
    pub fn status(&self) -> Status {
        let mut s = self.snapshots.borrow().status.clone();
        s.counters = self
            .counters
            .read()
            .into_iter()
            .map(|(r, n)| (r.name().to_string(), n))
            .collect();
        s.proxy = self.proxy.as_ref().map(|p| p.snapshot());
        s.events = self.events.counts();
        s.flows = Some(self.flows.table());
        s
    }
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/events", get(events))
        .route("/flows", get(flows))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "try /ready, /status, /metrics, /events[?workload=W][&follow] or /flows[?workload=W][&since=UNIX_MS]\n",
            )
        })
        .with_state(admin)
}

pub async fn serve(listener: TcpListener, admin: Admin) {
    if let Err(e) = axum::serve(listener, router(admin)).await {
        tracing::error!("admin endpoint stopped: {e}");
    }
}

async fn ready(State(a): State<Admin>) -> Response {
    let snapshot = a.snapshots.borrow().clone();
    if snapshot.status.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready:\n{}\n", snapshot.status.not_ready.join("\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn status(State(a): State<Admin>) -> Response {
    json(&a.status())
}

async fn metrics_text(State(a): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics(&a.status()),
    )
        .into_response()
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_string_pretty(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    workload: Option<String>,
    follow: Option<String>,
}

async fn events(State(a): State<Admin>, Query(q): Query<EventsQuery>) -> Response {
    if q.follow.is_some() {
        return follow(a.events, q.workload);
    }
    json(&a.events.recent(q.workload.as_deref()))
}

#[derive(Debug, serde::Deserialize)]
struct FlowsQuery {
    workload: Option<String>,
    /// Only flows seen at or after this time, in ms since the Unix epoch.
    since: Option<u64>,
}

/// `/flows`: the flow record, read fresh from the kernel (off the runtime).
async fn flows(State(a): State<Admin>, Query(q): Query<FlowsQuery>) -> Response {
    let log = a.flows.clone();
    let report = tokio::task::spawn_blocking(move || {
        log.refresh();
        log.report(q.workload.as_deref(), q.since)
    })
    .await;
    // Compact: a full record is tens of thousands of flows.
    match report.map(|r| serde_json::to_string(&r)) {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/events?follow`: the recent events, then each new one as it comes, one JSON object per
/// line, until the client goes away. A client that reads too slowly loses events (counted as
/// `followerDropped`), never the agent's memory.
fn follow(log: Arc<EventLog>, workload: Option<String>) -> Response {
    let rx = log.follow();
    let recent: Vec<Result<Bytes, Infallible>> = log
        .recent(workload.as_deref())
        .iter()
        .map(|r| Ok(json_line(r)))
        .collect();
    let live = futures::stream::unfold((rx, log, workload), |(mut rx, log, workload)| async move {
        loop {
            match rx.recv().await {
                Ok(r) if workload.as_deref().is_none_or(|w| r.is_of(w)) => {
                    return Some((Ok(json_line(&r)), (rx, log, workload)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => log.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = Body::from_stream(futures::StreamExt::chain(
        futures::stream::iter(recent),
        live,
    ));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn json_line(r: &EventRecord) -> Bytes {
    let mut line = serde_json::to_string(r).unwrap_or_default();
    line.push('\n');
    Bytes::from(line)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectLabels {
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyDecisionLabels {
    workload: String,
    verdict: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyRefusedLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    at: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
}

/// Prometheus text for a status snapshot.
pub fn metrics(status: &Status) -> String {
    let mut registry = Registry::with_prefix("passthrough");
    let connects = Family::<ConnectLabels, Counter>::default();
    for (reason, n) in &status.counters {
        let verdict = passthrough_common::Reason::ALL
            .iter()
            .find(|r| r.name() == reason)
            .map_or("allow", |r| if r.allows() { "allow" } else { "deny" });
        connects
            .get_or_create(&ConnectLabels {
                verdict: verdict.into(),
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    registry.register(
        "connect",
        "connect() calls of workloads decided in the kernel, by verdict and reason",
        connects,
    );
    let generation = Gauge::<i64>::default();
    generation.set(i64::try_from(status.generation).unwrap_or(i64::MAX));
    registry.register(
        "policy_generation",
        "Number of policy changes applied since the agent started",
        generation,
    );
    let workloads = Gauge::<i64>::default();
    workloads.set(status.workloads.iter().filter(|w| w.enforced).count() as i64);
    registry.register(
        "workloads_enforced",
        "Workloads with programs attached",
        workloads,
    );
    let ready = Gauge::<i64>::default();
    ready.set(i64::from(status.ready));
    registry.register("ready", "1 when every workload is enforced", ready);
    let reload = Family::<ReloadLabels, Gauge>::default();
    if let Some(r) = &status.last_reload {
        reload
            .get_or_create(&ReloadLabels {
                result: r.result.name().into(),
            })
            .set(1);
    }
    registry.register("last_reload", "Result of the last policy reload", reload);
    if let Some(r) = &status.last_reload {
        let at = Gauge::<i64>::default();
        at.set(i64::try_from(r.unix).unwrap_or(i64::MAX));
        registry.register(
            "last_reload_timestamp_seconds",
            "When the policies were last read (Unix time)",
            at,
        );
        let invalid = Gauge::<i64>::default();
        invalid.set(i64::try_from(r.problems.len()).unwrap_or(i64::MAX));
        registry.register(
            "policy_problems",
            "Violations and conflicts found at the last reload (the set is refused while any remain)",
            invalid,
        );
    }
    let entries = Family::<MapLabels, Gauge>::default();
    let capacity = Family::<MapLabels, Gauge>::default();
    for m in &status.maps {
        let labels = MapLabels { map: m.map.clone() };
        entries
            .get_or_create(&labels)
            .set(i64::try_from(m.entries).unwrap_or(i64::MAX));
        capacity.get_or_create(&labels).set(i64::from(m.capacity));
    }
    // The rule maps are per policy and sized to it: their entries, summed, have no fixed
    // capacity.
    let e = &status.policy_entries;
    for (map, n) in [
        (passthrough_common::map_names::EXACT_V4, e.exact_v4),
        (passthrough_common::map_names::EXACT_V6, e.exact_v6),
        (passthrough_common::map_names::CIDR_V4, e.cidr_v4),
        (passthrough_common::map_names::CIDR_V6, e.cidr_v6),
        (passthrough_common::map_names::DOMAIN_PORTS, e.domain_ports),
    ] {
        entries
            .get_or_create(&MapLabels { map: map.into() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "map_entries",
        "Entries in each kernel map (the rule maps: over every installed policy)",
        entries,
    );
    registry.register(
        "map_capacity",
        "Capacity of the kernel maps of fixed size",
        capacity,
    );
    if let Some(f) = &status.flows {
        for (name, help, n) in [
            (
                "flows_evicted",
                "Flow table entries the kernel's LRU evicted (inserted minus present, exact): connects since the agent's last reading of them are not in the record",
                f.evicted,
            ),
            (
                "flows_inserted",
                "Flow table entries the connect programs created",
                f.inserted,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            registry.register(name, help, c);
        }
        let present = Gauge::<i64>::default();
        present.set(i64::try_from(f.present).unwrap_or(i64::MAX));
        registry.register("flows_present", "Entries in the kernel flow table", present);
    }
    let memory = Gauge::<i64>::default();
    memory.set(i64::try_from(status.policy_memory_bytes).unwrap_or(i64::MAX));
    registry.register(
        "policy_map_bytes",
        "Kernel memory of the installed policies' maps (each sized to its policy)",
        memory,
    );
    let unenforceable = Gauge::<i64>::default();
    unenforceable.set(status.last_reload.as_ref().map_or(0, |r| {
        i64::try_from(r.unenforceable_domains).unwrap_or(i64::MAX)
    }));
    registry.register(
        "domain_entries_unenforceable",
        "Domain entries of the applied policies that allow nothing: the peek proxy is off (proxy.enabled: false)",
        unenforceable,
    );
    let audit = Family::<WorkloadLabels, Gauge>::default();
    for w in &status.workloads {
        audit
            .get_or_create(&WorkloadLabels {
                workload: w.cgroup.display().to_string(),
            })
            .set(i64::from(w.audit));
    }
    registry.register(
        "workload_audit",
        "1 when the workload is in audit mode: denials are reported, not enforced",
        audit,
    );
    let received = Counter::<u64>::default();
    received.inc_by(status.events.received);
    registry.register(
        "events",
        "Deny, would-deny and proxy events received from the kernel and the proxy",
        received,
    );
    let dropped = Family::<DroppedLabels, Counter>::default();
    dropped
        .get_or_create(&DroppedLabels {
            at: "kernel".into(),
        })
        .inc_by(status.events.kernel_dropped);
    dropped
        .get_or_create(&DroppedLabels {
            at: "follower".into(),
        })
        .inc_by(status.events.follower_dropped);
    registry.register(
        "events_dropped",
        "Events lost: the kernel ring buffer was full, or a follower read too slowly",
        dropped,
    );
    if let Some(p) = &status.proxy {
        let decisions = Family::<ProxyDecisionLabels, Counter>::default();
        for (k, n) in &p.decisions {
            decisions
                .get_or_create(&ProxyDecisionLabels {
                    workload: k.workload.clone(),
                    verdict: k.verdict.name().into(),
                    rule: k.rule.clone(),
                })
                .inc_by(*n);
        }
        registry.register(
            "proxy_decisions",
            "Connections the peek proxy decided from the name the client sent, by workload, verdict and deciding entry (or reason)",
            decisions,
        );
        let refused = Family::<ProxyRefusedLabels, Counter>::default();
        for (cause, n) in &p.refused {
            refused
                .get_or_create(&ProxyRefusedLabels {
                    cause: cause.clone(),
                })
                .inc_by(*n);
        }
        registry.register(
            "proxy_refused",
            "Connections the peek proxy closed before any decision: a bound hit (peek_bytes, peek_timeout, max_connections), malformed input, or the client leaving",
            refused,
        );
        let active = Gauge::<i64>::default();
        active.set(i64::try_from(p.active).unwrap_or(i64::MAX));
        registry.register(
            "proxy_active_connections",
            "Connections the peek proxy holds now",
            active,
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        out = format!("# encoding failed: {e}\n");
    }
    out
}
