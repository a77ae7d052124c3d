//! Whether a host name or address is this machine: the one test behind TLS's default mode (a
//! loopback database gets `prefer`) and dev mode's `Host`/`Origin` check.

/// Whether `host` (a name or an address, `[::1]` with or without brackets) is this machine:
/// `localhost` or a name under it (RFC 6761), `127.0.0.0/8`, or `::1`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether an HTTP `Host` header value (`name[:port]`, `[v6][:port]`) names this machine.
pub(crate) fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    !host.is_empty() && is_loopback(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses() {
        for yes in [
            "localhost",
            "LOCALHOST",
            "app.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "attacker.example",
            "localhost.attacker.example",
            "10.0.0.1",
            "0.0.0.0",
            "",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
        for yes in [
            "localhost:8700",
            "127.0.0.1:1",
            "[::1]:8700",
            "[::1]",
            "localhost",
        ] {
            assert!(is_loopback_authority(yes), "{yes}");
        }
        for no in [
            "attacker.example:8700",
            "127.0.0.1.nip.io",
            "[::1]x",
            "localhost:80:80",
            "127.0.0.1@evil",
        ] {
            assert!(!is_loopback_authority(no), "{no}");
        }
    }
}
