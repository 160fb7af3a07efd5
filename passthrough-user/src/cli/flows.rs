//! `passthrough flows`: what each workload connected to in the agent's window, with counts,
//! verdicts and the deciding entries, from the kernel's flow table and the peek proxy.

use std::{
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::Args as ClapArgs;

use super::{
    Output,
    agent::{AdminAddr, fetch},
    fail, print_json,
};
use crate::{
    api::{FlowRecord, FlowsReport},
    config::{DEFAULT_ADMIN, duration_text},
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Address of a running agent's admin endpoint: IP:PORT or HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN, value_parser = AdminAddr::parse)]
    pub admin: AdminAddr,
    /// Only this workload: its cgroup path as in the agent's config, or its name.
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,
    /// Only flows seen in the last DURATION: a whole number with ms, s, m or h (90s, 30m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = since)]
    pub since: Option<Duration>,
}

/// A `--since` value.
pub fn since(s: &str) -> Result<Duration, String> {
    duration_text::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration: {}", duration_text::EXPECTED))
}

/// `--since` as ms since the Unix epoch.
pub fn since_ms(d: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// The agent's flow record, filtered as asked.
pub fn fetch_flows(
    admin: &AdminAddr,
    workload: Option<&str>,
    since: Option<Duration>,
) -> Result<FlowsReport, String> {
    let mut path = String::from("/flows");
    let mut sep = '?';
    if let Some(w) = workload {
        let w = percent_encoding::utf8_percent_encode(w, percent_encoding::NON_ALPHANUMERIC);
        let _ = write!(path, "{sep}workload={w}");
        sep = '&';
    }
    if let Some(d) = since {
        let _ = write!(path, "{sep}since={}", since_ms(d));
    }
    let body = fetch(admin, &path)?;
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer from {admin}: {e}"))
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let report = match fetch_flows(&args.admin, args.workload.as_deref(), args.since) {
        Ok(r) => r,
        Err(message) => return fail(output, &message),
    };
    match output {
        Output::Json => print_json(&report),
        Output::Text => print!("{}", render(&report)),
    }
    ExitCode::SUCCESS
}

/// The protocol column: the proxy's name protocol, else the socket's.
fn protocol(r: &FlowRecord) -> String {
    match (&r.protocol, r.ip_protocol) {
        (Some(p), _) => p.clone(),
        (None, 6) => "tcp".into(),
        (None, 17) => "udp".into(),
        (None, n) => format!("ip/{n}"),
    }
}

/// The record as a table per workload, and the table's coverage.
pub fn render(report: &FlowsReport) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for r in &report.flows {
        if current != Some(r.workload.as_str()) {
            current = Some(&r.workload);
            let name = r
                .workload_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{}workload {}{name}",
                if out.is_empty() { "" } else { "\n" },
                r.workload
            );
            let _ = writeln!(
                out,
                "  {:<28} {:<6} {:<24} {:<10} {:>7}  {:<24} ENTRY",
                "DESTINATION", "PROTO", "NAME", "VERDICT", "COUNT", "LAST"
            );
        }
        let _ = writeln!(
            out,
            "  {:<28} {:<6} {:<24} {:<10} {:>7}  {:<24} {}",
            r.destination.to_string(),
            protocol(r),
            r.name.as_deref().unwrap_or("-"),
            r.verdict.name(),
            r.count,
            r.last,
            r.rule.as_deref().unwrap_or(r.reason.name()),
        );
    }
    if report.flows.is_empty() {
        out.push_str("no flows recorded\n");
    }
    let t = &report.table;
    let _ = writeln!(
        out,
        "\nkernel table: {}; {} of {} entries, {} created, {} evicted (their connects since the last reading are missing); history: {} of {} flows over {}h, {} dropped for room",
        if t.enabled {
            "on"
        } else {
            "off (flows.enabled: false)"
        },
        t.present,
        t.capacity,
        t.inserted,
        t.evicted,
        report.history_entries,
        report.history_capacity,
        report.window_secs / 3600,
        report.history_dropped,
    );
    out
}
