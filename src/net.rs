//! Who the client is: its address behind trusted proxies, and the key the
//! login limiter counts it under.
//!
//! Plumbing below `http` (it knows headers only as strings): the HTTP layer
//! hands over the socket peer and the forwarding headers, and gets back the
//! client address. Owns nothing else; must not import `http` or `actors`.
//!
//! Why the rightmost untrusted hop: every proxy appends the address it saw to
//! `X-Forwarded-For`, and a client may put anything in front. Walking from
//! the right, skipping addresses of our own trusted proxies, the first other
//! address is the one a trusted proxy saw connect; everything left of it is
//! the client's to choose, so it is never read.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// Why a trusted-proxy list was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0:?} is not an address or CIDR like 10.0.0.0/8 or ::1/128")]
pub struct BadCidr(pub String);

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses CIDRs; a bare address means that one host.
    pub fn parse(list: &[String]) -> Result<TrustedProxies, BadCidr> {
        let nets = list
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadCidr(s.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Whether `ip` is one of our proxies (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted
    /// proxy, in which case the rightmost untrusted hop of
    /// `X-Forwarded-For`, else `X-Real-IP`, else the peer. A malformed hop
    /// ends the walk at the peer: a header we cannot read names nobody.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: &[&str], real_ip: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        // Several X-Forwarded-For headers are one list, in order.
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if !hops.is_empty() {
            for hop in hops.iter().rev() {
                match parse_hop(hop) {
                    Some(ip) if self.contains(ip) => continue,
                    Some(ip) => return ip,
                    None => return peer,
                }
            }
            // Every hop is one of ours: the leftmost is the client.
            return hops.first().and_then(|h| parse_hop(h)).unwrap_or(peer);
        }
        real_ip.and_then(parse_hop).unwrap_or(peer)
    }
}

/// The key the login limiter counts an address under: IPv4 as is, IPv6 by
/// its /64, since one subscriber usually holds a whole /64 and would
/// otherwise get a fresh budget per address.
pub fn limiter_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports)
/// as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One hop of a forwarding header: an address, optionally with a port
/// (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let p = proxies(&["127.0.0.1/32"]);
        let got = p.client_ip(ip("203.0.113.9"), &["1.2.3.4"], Some("5.6.7.8"));
        assert_eq!(got, ip("203.0.113.9"));
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), &["1.2.3.4"], None),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_rightmost_untrusted_hop() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        // The client prepended 1.2.3.4 itself; our proxy appended what it saw.
        let got = p.client_ip(ip("127.0.0.1"), &["1.2.3.4, 198.51.100.7, 10.1.2.3"], None);
        assert_eq!(got, ip("198.51.100.7"));
        // Split across two headers, same list.
        let got = p.client_ip(ip("127.0.0.1"), &["1.2.3.4", "198.51.100.7"], None);
        assert_eq!(got, ip("198.51.100.7"));
        // X-Real-IP when there is no X-Forwarded-For.
        let got = p.client_ip(ip("10.9.9.9"), &[], Some("198.51.100.8"));
        assert_eq!(got, ip("198.51.100.8"));
        // Garbage in the rightmost hop: the peer, not something left of it.
        let got = p.client_ip(ip("127.0.0.1"), &["1.2.3.4, not-an-ip"], None);
        assert_eq!(got, ip("127.0.0.1"));
        // Ports and brackets.
        let got = p.client_ip(ip("127.0.0.1"), &["[2001:db8::1]:443"], None);
        assert_eq!(got, ip("2001:db8::1"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_cidrs() {
        let p = proxies(&["127.0.0.0/8"]);
        assert!(p.contains(ip("::ffff:127.0.0.1")));
        assert!(!p.contains(ip("::1")));
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        assert_eq!(
            limiter_key(ip("2001:db8:1:2:aaaa::1")),
            limiter_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            limiter_key(ip("2001:db8:1:2::1")),
            limiter_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limiter_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limiter_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn bad_cidrs_are_refused_by_name() {
        let err = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"));
        assert!(TrustedProxies::parse(&["nginx".into()]).is_err());
        assert!(TrustedProxies::parse(&["::1".into(), "172.16.0.0/12".into()]).is_ok());
    }
}
