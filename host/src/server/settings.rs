//! `[server]` of trellis.toml: the HTTP listener's address, limits and timeouts, the listings
//! open without a user, and the proxies whose `X-Forwarded-For` is believed; checked when the
//! file loads.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::values::{HumanDuration, Interpolated, ResolveError};

/// The address `trellis serve` listens on when neither config nor `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// How long in-flight requests may run after a stop signal before the host exits anyway.
    pub shutdown_timeout: Duration,
    /// The longest any one request may take.
    pub request_timeout: Duration,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The longest a client may take to send a request's head once it has sent its first byte.
    pub header_read_timeout: Duration,
    /// The longest a connection may stay open with no request in flight.
    pub keep_alive_timeout: Duration,
    /// The most client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Which listings answer without a caller (`metrics`, `pools`, `plugins`, `workflows`);
    /// by default each needs an authenticated caller, since they show database users and
    /// hosts, plugin hashes and load errors.
    pub public: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges): a run's
    /// `runtime.ip_address` is then the nearest address in that header that is not one of them.
    /// Empty by default: the client is the peer address, and the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The listings `[server] public` may name.
pub const PUBLIC_LISTINGS: [&str; 4] = ["metrics", "pools", "plugins", "workflows"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    listen: Option<Interpolated<SocketAddr>>,
    shutdown_timeout: Option<Interpolated<HumanDuration>>,
    request_timeout: Option<Interpolated<HumanDuration>>,
    max_body_bytes: Option<usize>,
    header_read_timeout: Option<Interpolated<HumanDuration>>,
    keep_alive_timeout: Option<Interpolated<HumanDuration>>,
    max_connections: Option<usize>,
    public: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
}

/// `[server]` with its defaults, checked.
pub(crate) fn resolve(raw: RawServer) -> Result<ServerConfig, ResolveError> {
    let mut server = ServerConfig {
        listen: raw.listen.map_or_else(
            || DEFAULT_LISTEN.parse().expect("default listen address"),
            |l| l.0,
        ),
        shutdown_timeout: raw
            .shutdown_timeout
            .map_or(Duration::from_secs(30), |d| d.0.0),
        request_timeout: raw
            .request_timeout
            .map_or(Duration::from_secs(60), |d| d.0.0),
        max_body_bytes: raw.max_body_bytes.unwrap_or(1024 * 1024),
        header_read_timeout: raw
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0.0),
        keep_alive_timeout: raw
            .keep_alive_timeout
            .map_or(Duration::from_secs(75), |d| d.0.0),
        max_connections: raw.max_connections.unwrap_or(1024),
        public: raw.public.unwrap_or_default(),
        trusted_proxies: Vec::new(),
    };
    for entry in raw.trusted_proxies.unwrap_or_default() {
        let net = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => server.trusted_proxies.push(net),
            Err(_) => {
                return Err(ResolveError {
                    span: 0..0,
                    key: "server.trusted_proxies".into(),
                    message: format!(
                        "`{entry}` is not an address or range like `10.0.0.5` or `10.0.0.0/8`"
                    ),
                });
            }
        }
    }
    if let Some(name) = server
        .public
        .iter()
        .find(|n| !PUBLIC_LISTINGS.contains(&n.as_str()))
    {
        let hint = crate::suggest::did_you_mean(name, &PUBLIC_LISTINGS)
            .map(|m| format!(": did you mean `{m}`?"))
            .unwrap_or_else(|| {
                format!(
                    ": use {}",
                    PUBLIC_LISTINGS.map(|n| format!("`{n}`")).join(", ")
                )
            });
        return Err(ResolveError {
            span: 0..0,
            key: "server.public".into(),
            message: format!("unknown listing `{name}`{hint}"),
        });
    }
    if server.max_connections == 0 {
        return Err(ResolveError {
            span: 0..0,
            key: "server.max_connections".into(),
            message: "must be at least 1: it is how many client connections may be open at once"
                .into(),
        });
    }
    Ok(server)
}
