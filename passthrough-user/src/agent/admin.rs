//! The admin endpoint: `GET /ready`, `GET /status` (JSON), `GET /metrics` (Prometheus).
//! A deliberately small HTTP/1.1 server: one request per connection, GET only.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

use super::{Agent, events::EventLog, run::lock};
use crate::api::{EventRecord, Status};

pub async fn serve(listener: TcpListener, agent: Arc<Mutex<Agent>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &agent).await {
                tracing::debug!("admin request: {e}");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, agent: &Mutex<Agent>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Read the request head (bounded: the admin endpoint takes no bodies).
    let head = loop {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut buf[n..]),
        )
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
        if r == 0 {
            return Ok(());
        }
        n += r;
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if n == buf.len() {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is served\n").await;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/events" => {
            let log = lock(agent).events.clone();
            let param = |key: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == key).then(|| percent_decode(v))
                })
            };
            let workload = param("workload");
            if param("follow").is_some() {
                return follow(&mut stream, &log, workload.as_deref()).await;
            }
            let body = serde_json::to_string_pretty(&log.recent(workload.as_deref()))
                .unwrap_or_else(|e| e.to_string());
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/ready" => {
            let (ready, reasons) = {
                let a = lock(agent);
                (a.ready(), a.not_ready_reasons())
            };
            if ready {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                let body = format!("not ready:\n{}\n", reasons.join("\n"));
                respond(&mut stream, 503, "text/plain", &body).await
            }
        }
        "/status" => {
            let status = lock(agent).status();
            let body = serde_json::to_string_pretty(&status).unwrap_or_else(|e| e.to_string());
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/metrics" => {
            let status = lock(agent).status();
            let body = metrics(&status);
            respond(
                &mut stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "try /ready, /status, /metrics or /events[?workload=W][&follow]\n",
            )
            .await
        }
    }
}

/// `/events?follow`: the recent events, then each new one as it comes, one JSON object per
/// line, until the client goes away. A client that reads too slowly loses events (counted as
/// `followerDropped`), never the agent's memory.
async fn follow(
    stream: &mut TcpStream,
    log: &EventLog,
    workload: Option<&str>,
) -> std::io::Result<()> {
    let mut rx = log.follow();
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
        )
        .await?;
    for r in log.recent(workload) {
        stream.write_all(json_line(&r).as_bytes()).await?;
    }
    loop {
        match rx.recv().await {
            Ok(r) if workload.is_none_or(|w| r.is_of(w)) => {
                stream.write_all(json_line(&r).as_bytes()).await?;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => log.lagged(n),
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn json_line(r: &EventRecord) -> String {
    let mut line = serde_json::to_string(r).unwrap_or_default();
    line.push('\n');
    line
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                Some(Ok(b)) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
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
    let memory = Gauge::<i64>::default();
    memory.set(i64::try_from(status.policy_memory_bytes).unwrap_or(i64::MAX));
    registry.register(
        "policy_map_bytes",
        "Kernel memory of the installed policies' maps (each sized to its policy)",
        memory,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("%2Fsys%2Ffs%2Fcgroup%2Fapp.service"),
            "/sys/fs/cgroup/app.service"
        );
        assert_eq!(percent_decode("a+b%zz%4"), "a b%zz%4");
    }

    /// Keys of ours are camelCase; maps keyed by data (counter reasons, refusal causes) are
    /// only looked into.
    fn camel_case_keys(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                let data = at.ends_with(".counters") || at.ends_with(".refused");
                for (k, v) in m {
                    if !data && !k.chars().all(|c| c.is_ascii_alphanumeric()) {
                        bad.push(format!("{at}.{k}"));
                    }
                    camel_case_keys(v, &format!("{at}.{k}"), bad);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| camel_case_keys(v, at, bad)),
            _ => {}
        }
    }

    #[test]
    fn status_and_event_json_keys_are_camel_case() {
        use crate::{
            agent::{KubeStatus, MapFill, ReloadReport, WorkloadStatus, maps::EntryCounts},
            api::{DecisionKey, EventKind, EventSource, ProxyStats, ReloadResult, Verdict},
            policy::compile::EffectiveMode,
        };
        let status = Status {
            ready: false,
            not_ready: vec!["x".into()],
            generation: 1,
            last_reload: Some(ReloadReport {
                at: "t".into(),
                unix: 1,
                result: ReloadResult::Applied,
                problems: vec!["p".into()],
                warnings: vec!["w".into()],
            }),
            bpffs: "/sys/fs/bpf/passthrough".into(),
            slots: 1,
            maps: vec![MapFill {
                map: "WORKLOADS".into(),
                entries: 1,
                capacity: 2,
            }],
            policy_entries: EntryCounts::default(),
            policy_memory_bytes: 1,
            workloads: vec![WorkloadStatus {
                cgroup: "/w".into(),
                cgroup_id: Some(1),
                name: Some("n".into()),
                namespace: Some("ns".into()),
                enforced: true,
                mode: Some(EffectiveMode::Matched),
                mode_from: None,
                audit: false,
                policies: Vec::new(),
                entries: EntryCounts::default(),
                slot: Some(1),
                containment: Some(crate::policy::containment::Containment {
                    udp: crate::policy::containment::UdpMode::Deny,
                    dns: None,
                    raw_sockets: crate::policy::containment::RawSockets::Deny,
                }),
                generation: Some(1),
                error: Some("e".into()),
            }],
            counters: [("no_match".to_string(), 1)].into(),
            packet_sockets: crate::agent::loader::PacketSockets::Open("r".into()),
            proxy: Some(ProxyStats {
                active: 1,
                decisions: vec![(
                    DecisionKey {
                        workload: "/w".into(),
                        verdict: Verdict::Allow,
                        rule: "r".into(),
                    },
                    1,
                )],
                refused: [("peek_timeout".to_string(), 1)].into(),
            }),
            events: Default::default(),
            kubernetes: Some(KubeStatus {
                error: Some("e".into()),
                ..KubeStatus::default()
            }),
        };
        let event = EventRecord {
            time: "t".into(),
            source: EventSource::Proxy,
            workload: "/w".into(),
            workload_name: Some("ns/n".into()),
            mesh: "default".into(),
            tags: vec![("k".into(), "v".into())],
            pid: Some(1),
            command: Some("c".into()),
            kind: EventKind::Datagram,
            destination: Some("192.0.2.1:443".parse().expect("addr")),
            socket: Some("AF_PACKET SOCK_RAW protocol 768".into()),
            pinned_to: Some("192.0.2.2:443".parse().expect("addr")),
            name: Some("example.com".into()),
            protocol: Some("tls".into()),
            verdict: Verdict::WouldDeny,
            reason: passthrough_common::Reason::DomainNoMatch,
            rule: "r".into(),
            count: 1,
        };
        let mut bad = Vec::new();
        camel_case_keys(&serde_json::to_value(&status).expect("json"), "", &mut bad);
        camel_case_keys(&serde_json::to_value(&event).expect("json"), "", &mut bad);
        assert!(bad.is_empty(), "keys not in camelCase: {bad:?}");
    }
}
