//! `passthrough run`, `status` and `uninstall`: the verbs that work with the agent.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Args as ClapArgs;

use super::{Output, fail, print_json};
use crate::agent::{
    Status,
    config::{AgentConfig, DEFAULT_ADMIN},
    loader,
};

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// The agent's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    /// Address of a running agent's admin endpoint.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
}

#[derive(Debug, ClapArgs)]
pub struct UninstallArgs {
    /// The configuration file the agent ran with (its `bpffs` is cleaned).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: &RunArgs, output: Output) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if output == Output::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(output, &format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(crate::agent::run::run(&args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(output, &e.to_string()),
    }
}

/// GET a path from the admin endpoint: (status code, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The body of a successful GET from the agent, or a message saying what went wrong and
/// what to check.
pub fn fetch(admin: SocketAddr, path: &str) -> Result<String, String> {
    match admin_get(admin, path) {
        Ok((200, body)) => Ok(body),
        Ok((code, body)) => Err(format!("{admin} answered {code}: {body}")),
        Err(e) => Err(no_agent(admin, &e)),
    }
}

/// Nothing answers at the admin address.
pub fn no_agent(admin: SocketAddr, e: &std::io::Error) -> String {
    format!("no agent answers at {admin}: {e} (is `passthrough run` running? pass --admin ADDR)")
}

pub fn status(args: &StatusArgs, output: Output) -> ExitCode {
    let body = match fetch(args.admin, "/status") {
        Ok(body) => body,
        Err(message) => return fail(output, &message),
    };
    if output == Output::Json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let status: Status = match serde_json::from_value(raw.clone()) {
        Ok(s) => s,
        Err(e) => return fail(output, &format!("unexpected answer from the agent: {e}")),
    };
    println!(
        "ready: {}   policy generation: {}   slots: {}   bpffs: {}",
        status.ready,
        status.generation,
        status.slots,
        status.bpffs.display()
    );
    for r in &status.not_ready {
        println!("  not ready: {r}");
    }
    if let Some(r) = raw.get("lastReload") {
        println!(
            "last reload: {} at {}",
            r["result"].as_str().unwrap_or("?"),
            r["at"].as_str().unwrap_or("?")
        );
        for p in r["problems"].as_array().into_iter().flatten() {
            println!("  {}", p.as_str().unwrap_or(""));
        }
    }
    match &status.packet_sockets {
        loader::PacketSockets::Refused => {
            println!("packet sockets: refused where rawSockets is Deny (BPF LSM)");
        }
        loader::PacketSockets::Open(why) => println!("packet sockets: OPEN on this kernel: {why}"),
    }
    println!();
    println!(
        "{:<50} {:<9} {:<10} {:<6} {:<8} {:<6} {:<6} POLICIES",
        "WORKLOAD", "ENFORCED", "MODE", "AUDIT", "ENTRIES", "UDP", "RAW"
    );
    for (w, raw_w) in status
        .workloads
        .iter()
        .zip(raw["workloads"].as_array().into_iter().flatten())
    {
        let entries: u64 = raw_w["entries"]
            .as_object()
            .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0);
        let policies: Vec<&str> = raw_w["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        // The settings bind modes None and Matched only.
        let judged = matches!(raw_w["mode"].as_str(), Some("None" | "Matched"));
        let setting = |key: &str| {
            raw_w["containment"][key]
                .as_str()
                .filter(|_| judged)
                .unwrap_or("-")
                .to_string()
        };
        println!(
            "{:<50} {:<9} {:<10} {:<6} {:<8} {:<6} {:<6} {}",
            w.cgroup.display(),
            if w.enforced { "yes" } else { "NO" },
            raw_w["mode"].as_str().unwrap_or("-"),
            if w.audit { "on" } else { "off" },
            entries,
            setting("udp"),
            setting("rawSockets"),
            policies.join(",")
        );
        if let Some(e) = &w.error {
            println!("  error: {e}");
        }
    }
    println!();
    println!("kernel decisions:");
    for (reason, n) in &status.counters {
        if *n > 0 {
            println!("  {reason:<16} {n}");
        }
    }
    ExitCode::SUCCESS
}

pub fn uninstall(args: &UninstallArgs, output: Output) -> ExitCode {
    let config = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(output, &e.to_string()),
    };
    if let Ok((_, _)) = admin_get(config.admin.listen, "/ready") {
        return fail(
            output,
            &format!(
                "an agent still answers at {}: stop it first, or it would attach again",
                config.admin.listen
            ),
        );
    }
    match loader::uninstall(&config.bpffs) {
        Ok(n) => {
            match output {
                Output::Text => println!(
                    "detached from {n} cgroups and removed {}",
                    config.bpffs.display()
                ),
                Output::Json => print_json(&serde_json::json!({
                    "detachedCgroups": n,
                    "removed": config.bpffs,
                })),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(output, &e.to_string()),
    }
}
