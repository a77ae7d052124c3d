//! The address a request comes from, for `runtime.ip_address`: the peer's, or, when the peer is a
//! trusted proxy (`[server] trusted_proxies`), the nearest address in `X-Forwarded-For` that is
//! not a trusted proxy itself (proxies append, so the right end is the nearest). A client can
//! write anything into the header's left end; only addresses added by trusted proxies count.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address for a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for item in text.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed list: believe nothing in it.
                Err(_) => return peer,
            }
        }
    }
    let mut client = peer;
    for ip in hops.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_hops_are_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // No trusted proxy: the peer, whatever the header says.
        assert_eq!(
            client_ip(ip("203.0.113.1"), &xff(&["1.2.3.4"]), &[]),
            ip("203.0.113.1")
        );
        assert_eq!(
            client_ip(ip("203.0.113.1"), &xff(&["1.2.3.4"]), &trusted),
            ip("203.0.113.1")
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // A forged left end is skipped: the nearest untrusted hop wins.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &xff(&["6.6.6.6, 198.51.100.7, 10.0.0.9"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["6.6.6.6", "198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // All trusted: the farthest.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["10.1.1.1"]), &trusted),
            ip("10.1.1.1")
        );
        // Malformed or absent: the peer.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["not-an-ip"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
    }
}
