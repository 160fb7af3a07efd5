//! `passthrough run`, `status` and `uninstall`: the verbs that work with the agent.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args as ClapArgs;

use super::{Output, fail, print_findings_text, print_json};
use crate::{
    agent::{AgentError, loader},
    api::{PacketSockets, Status},
    config::{AgentConfig, ConfigError, DEFAULT_ADMIN},
};

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// The agent's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, ClapArgs)]
pub struct StatusArgs {
    /// Address of a running agent's admin endpoint: IP:PORT or HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN, value_parser = AdminAddr::parse)]
    pub admin: AdminAddr,
}

/// A running agent's admin endpoint, as given (`localhost:9902`) and resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAddr {
    pub given: String,
    pub addrs: Vec<SocketAddr>,
}

impl AdminAddr {
    /// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, resolved now.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self {
                given: s.to_string(),
                addrs: vec![a],
            });
        }
        let Some((host, port)) = s.rsplit_once(':').filter(|(h, _)| !h.is_empty()) else {
            return Err(format!(
                "{s:?} has no port: write HOST:PORT, e.g. {DEFAULT_ADMIN} or localhost:9902"
            ));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: the port {port:?} is not a number from 1 to 65535"))?;
        let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| format!("{s:?}: cannot resolve {host:?}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{s:?}: {host:?} resolves to no address"));
        }
        Ok(Self {
            given: s.to_string(),
            addrs,
        })
    }
}

impl From<SocketAddr> for AdminAddr {
    fn from(a: SocketAddr) -> Self {
        Self {
            given: a.to_string(),
            addrs: vec![a],
        }
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
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
        Err(AgentError::Config(e)) => config_refused(
            &e,
            "the config is refused: nothing was loaded into the kernel; check it with `passthrough validate --config`",
            output,
        ),
        Err(e) => fail(output, &e.to_string()),
    }
}

/// A config (or its policies) the agent will not start with: every error, and with JSON the
/// config's as `{file, field, message}` objects.
fn config_refused(e: &ConfigError, message: &str, output: Output) -> ExitCode {
    match output {
        Output::Text => {
            for f in &e.config {
                eprintln!("{}", f.line());
            }
            print_findings_text(&e.policies);
            fail(output, message)
        }
        Output::Json => {
            println!(
                "{}",
                serde_json::json!({
                    "error": message,
                    "config": e.config,
                    "problems": e.policies,
                })
            );
            ExitCode::from(2)
        }
    }
}

/// The HTTP client for the admin endpoint: plain HTTP, answers of any status returned.
fn client(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(3)))
        .timeout_global(timeout)
        .build()
        .into()
}

/// The largest answer read from the endpoint (`/events` holds a few thousand records).
const MAX_ANSWER: u64 = 64 << 20;

fn io_error(e: ureq::Error) -> std::io::Error {
    match e {
        ureq::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// GET a path from the admin endpoint: (status code, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut answer = client(Some(Duration::from_secs(10)))
        .get(format!("http://{addr}{path}"))
        .call()
        .map_err(io_error)?;
    let code = answer.status().as_u16();
    let body = answer
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .map_err(io_error)?;
    Ok((code, body))
}

/// The body of a successful GET from the agent, or a message saying what went wrong and
/// what to check. Each address of the endpoint is tried in turn.
pub fn fetch(admin: &AdminAddr, path: &str) -> Result<String, String> {
    let mut last = None;
    for addr in &admin.addrs {
        match admin_get(*addr, path) {
            Ok((200, body)) => return Ok(body),
            Ok((code, body)) => return Err(format!("{admin} answered {code}: {body}")),
            Err(e) => last = Some(e),
        }
    }
    Err(no_agent(
        admin,
        &last.unwrap_or_else(|| std::io::Error::other("no address")),
    ))
}

/// A streamed GET (`/events?follow`) from the first address that answers: its body, read as
/// it comes.
pub fn stream(admin: &AdminAddr, path: &str) -> std::io::Result<impl std::io::Read> {
    let mut last = std::io::Error::other("no address");
    for addr in &admin.addrs {
        match client(None).get(format!("http://{addr}{path}")).call() {
            Ok(answer) if answer.status() == 200 => return Ok(answer.into_body().into_reader()),
            Ok(answer) => {
                return Err(std::io::Error::other(format!(
                    "{admin} answered {}",
                    answer.status()
                )));
            }
            Err(e) => last = io_error(e),
        }
    }
    Err(last)
}

/// Nothing answers at the admin address.
pub fn no_agent(admin: &AdminAddr, e: &std::io::Error) -> String {
    format!("no agent answers at {admin}: {e} (is `passthrough run` running? pass --admin ADDR)")
}

pub fn status(args: &StatusArgs, output: Output) -> ExitCode {
    let body = match fetch(&args.admin, "/status") {
        Ok(body) => body,
        Err(message) => return fail(output, &message),
    };
    if output == Output::Json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let status: Status = match serde_json::from_str(&body) {
        Ok(s) => s,
        Err(e) => return fail(output, &format!("unexpected answer from the agent: {e}")),
    };
    println!(
        "ready: {}   policy generation: {}   policies in the kernel: {} ({} KiB)   bpffs: {}",
        status.ready,
        status.generation,
        status.slots,
        status.policy_memory_bytes / 1024,
        status.bpffs.display()
    );
    for r in &status.not_ready {
        println!("  not ready: {r}");
    }
    if let Some(r) = &status.last_reload {
        println!("last reload: {} at {}", r.result.name(), r.at);
        for p in r.problems.iter().chain(&r.warnings) {
            println!("  {p}");
        }
    }
    match &status.packet_sockets {
        PacketSockets::Refused => {
            println!("packet sockets: refused where rawSockets is Deny (BPF LSM)");
        }
        PacketSockets::Open(why) => println!("packet sockets: OPEN on this kernel: {why}"),
    }
    println!();
    println!(
        "{:<50} {:<9} {:<10} {:<6} {:<8} {:<6} {:<6} POLICIES",
        "WORKLOAD", "ENFORCED", "MODE", "AUDIT", "ENTRIES", "UDP", "RAW"
    );
    for w in &status.workloads {
        let e = &w.entries;
        let entries = e.exact_v4 + e.exact_v6 + e.cidr_v4 + e.cidr_v6 + e.domain_ports;
        let policies: Vec<&str> = w.policies.iter().map(|p| p.name.as_str()).collect();
        // The settings bind modes None and Matched only.
        let judged = w
            .mode
            .is_some_and(crate::policy::containment::Containment::applies_to);
        let (udp, raw) = match (&w.containment, judged) {
            (Some(c), true) => (format!("{:?}", c.udp), format!("{:?}", c.raw_sockets)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<50} {:<9} {:<10} {:<6} {:<8} {:<6} {:<6} {}",
            w.cgroup.display(),
            if w.enforced { "yes" } else { "NO" },
            w.mode.map_or_else(|| "-".to_string(), |m| format!("{m:?}")),
            if w.audit { "on" } else { "off" },
            entries,
            udp,
            raw,
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
    // Only bpffs and the admin address matter here: a config the agent would now refuse
    // (a workload gone wrong) can still be uninstalled.
    let config = match AgentConfig::parse(&args.config) {
        Ok(c) => c,
        Err(e) => {
            let e = ConfigError {
                config: vec![e.finding().clone()],
                policies: Vec::new(),
            };
            return config_refused(&e, "the config cannot be read: nothing was removed", output);
        }
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
