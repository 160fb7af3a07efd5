//! `passthrough events`: the deny, audit and proxy events a running agent observed, and with
//! `--follow` a live stream of them.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::ExitCode,
};

use clap::Args as ClapArgs;

use super::{
    Output,
    agent::{AdminAddr, fetch, no_agent},
    fail,
};
use crate::{
    api::{EventKind, EventRecord},
    config::DEFAULT_ADMIN,
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Address of a running agent's admin endpoint: IP:PORT or HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN, value_parser = AdminAddr::parse)]
    pub admin: AdminAddr,
    /// Keep printing events as they happen.
    #[arg(long)]
    pub follow: bool,
    /// Only this workload: its cgroup path as in the agent's config, or its name
    /// (`namespace/name` on Kubernetes).
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let mut path = String::from("/events");
    let mut sep = '?';
    if let Some(w) = &args.workload {
        path.push_str(&format!(
            "{sep}workload={}",
            percent_encoding::utf8_percent_encode(w, percent_encoding::NON_ALPHANUMERIC)
        ));
        sep = '&';
    }
    if args.follow {
        path.push_str(&format!("{sep}follow"));
        return match stream(&args.admin, &path, output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(output, &no_agent(&args.admin, &e)),
        };
    }
    let body = match fetch(&args.admin, &path) {
        Ok(body) => body,
        Err(message) => return fail(output, &message),
    };
    let records: Vec<EventRecord> = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                output,
                &format!("unexpected answer from {}: {e}", args.admin),
            );
        }
    };
    let mut out = std::io::stdout().lock();
    for r in &records {
        let _ = writeln!(out, "{}", render(r, output));
    }
    ExitCode::SUCCESS
}

/// Reads the agent's event stream until it ends or stdout goes away.
fn stream(admin: &AdminAddr, path: &str, output: Output) -> std::io::Result<()> {
    let lines = BufReader::new(super::agent::stream(admin, path)?).lines();
    let mut out = std::io::stdout().lock();
    for line in lines {
        let line = line?;
        let text = match serde_json::from_str::<EventRecord>(&line) {
            Ok(r) => render(&r, output),
            Err(_) => line,
        };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One event: a JSON line, or a line for people.
fn render(r: &EventRecord, output: Output) -> String {
    if output == Output::Json {
        return serde_json::to_string(r).unwrap_or_default();
    }
    let who = match (&r.command, r.pid) {
        (Some(c), Some(p)) => format!(" {c}[{p}]"),
        _ => String::new(),
    };
    let name = r
        .name
        .as_ref()
        .map(|n| format!(" name={n}"))
        .unwrap_or_default();
    let count = if r.count > 1 {
        format!(" (x{})", r.count)
    } else {
        String::new()
    };
    let target = match (r.kind, r.destination, &r.socket) {
        (EventKind::Socket, _, Some(s)) => format!("socket({s})"),
        (EventKind::Datagram, Some(d), _) => format!("udp {d}"),
        (_, Some(d), _) => d.to_string(),
        _ => "?".to_string(),
    };
    format!(
        "{} {:<10} {}{} -> {}{} {} by {}{}",
        r.time,
        r.verdict,
        r.workload,
        who,
        target,
        name,
        r.reason.name(),
        r.rule,
        count
    )
}
