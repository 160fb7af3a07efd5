//! `passthrough run`, `status` and `uninstall`: the verbs that work with the agent.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Args as ClapArgs;

use super::{Output, fail, print_findings_text, print_json};
use crate::{
    agent::{
        AgentError,
        config::{AgentConfig, ConfigError, DEFAULT_ADMIN},
        loader,
    },
    api::Status,
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

/// Connects to the first address of the endpoint that accepts.
pub fn connect(admin: &AdminAddr) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for addr in &admin.addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(3)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
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
