//! The names the peek proxy allows, resolved (hickory-resolver): the addresses a Domain
//! entry's name binds a connection to (`policy::bind`). Answers are cached for their TTL, in a
//! bounded cache; every lookup ends within the configured timeout, and every failure is a
//! typed refusal reason (fail closed).

use std::{net::IpAddr, time::Duration};

use hickory_resolver::{
    TokioResolver,
    config::{
        ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
        ResolverOpts, ServerOrderingStrategy,
    },
    net::{NetError, runtime::TokioRuntimeProvider},
};
use passthrough_common::Reason;

use crate::config::DnsConfig;

/// Why a name has no address to bind to. Each is a refusal with its own reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// No answer within the timeout.
    Timeout,
    /// The servers refused, failed or could not be reached.
    Unreachable,
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no A or AAAA record (or is not a valid DNS name).
    NoAddress,
}

impl ResolveError {
    pub const fn reason(self) -> Reason {
        match self {
            ResolveError::Timeout => Reason::DnsTimeout,
            ResolveError::Unreachable => Reason::DnsUnreachable,
            ResolveError::NxDomain => Reason::DnsNxDomain,
            ResolveError::NoAddress => Reason::DnsNoAddress,
        }
    }

    fn of(e: &NetError) -> Self {
        if e.is_nx_domain() {
            ResolveError::NxDomain
        } else if e.is_no_records_found() {
            ResolveError::NoAddress
        } else if matches!(e, NetError::Timeout) {
            ResolveError::Timeout
        } else {
            ResolveError::Unreachable
        }
    }
}

/// A resolver that cannot be built from the config.
#[derive(Debug, thiserror::Error)]
#[error("dns.servers: {0}")]
pub struct ResolverSetupError(String);

/// The agent's resolver for allowed names.
pub struct NameResolver {
    inner: TokioResolver,
    timeout: Duration,
    servers: Vec<std::net::SocketAddr>,
}

impl NameResolver {
    /// A resolver asking `cfg.servers`, or the nameservers of `/etc/resolv.conf` when none
    /// are given.
    pub fn new(cfg: &DnsConfig) -> Result<Self, ResolverSetupError> {
        let servers = if cfg.servers.is_empty() {
            system_servers()?
        } else {
            cfg.servers.clone()
        };
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut opts = ResolverOpts::default();
        // Names are looked up as given (absolute): a search domain must never turn the name
        // a client sent into another one.
        opts.ndots = 0;
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.cache_size = cfg.cache_size as u64;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The agent's own /etc/hosts is not the workloads' view of a name.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        let inner = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverSetupError(format!("cannot build the resolver: {e}")))?;
        Ok(Self {
            inner,
            timeout: cfg.timeout,
            servers,
        })
    }

    /// The servers asked, for logs and `/status`.
    pub fn servers(&self) -> &[std::net::SocketAddr] {
        &self.servers
    }

    /// The A and AAAA addresses of `name` (normalised: lower case, no trailing dot), from
    /// the cache while the answer's TTL lasts. Ends within the timeout whatever the servers do.
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if name.is_empty() || name.parse::<IpAddr>().is_ok() {
            // An address is not a name a Domain entry could have admitted.
            return Err(ResolveError::NoAddress);
        }
        let absolute = format!("{name}.");
        let lookup = tokio::time::timeout(self.timeout, self.inner.lookup_ip(absolute.as_str()));
        match lookup.await {
            Err(_) => Err(ResolveError::Timeout),
            Ok(Err(e)) => Err(ResolveError::of(&e)),
            Ok(Ok(found)) => {
                let addrs: Vec<IpAddr> = found.iter().collect();
                if addrs.is_empty() {
                    Err(ResolveError::NoAddress)
                } else {
                    Ok(addrs)
                }
            }
        }
    }
}

/// The nameservers of `/etc/resolv.conf` (port 53).
fn system_servers() -> Result<Vec<std::net::SocketAddr>, ResolverSetupError> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
        ResolverSetupError(format!(
            "none given and /etc/resolv.conf names none ({e}): list the resolvers, e.g. [10.96.0.10:53]"
        ))
    })?;
    Ok(config
        .name_servers()
        .iter()
        .map(|ns| std::net::SocketAddr::new(ns.ip, 53))
        .collect())
}
