//! Who is the client? The TCP peer, unless that peer is a proxy we trust.
//!
//! Forwarding headers are believed only when the socket peer is in `trusted_proxies` (Nginx on
//! loopback by default). `X-Forwarded-For` is then read right to left, skipping trusted hops;
//! the first untrusted address wins (nginx `real_ip_recursive on`, Envoy `xff_trusted_cidrs`).
//! Without a usable `X-Forwarded-For`, `X-Real-IP` is used. A client talking to us directly
//! gains nothing by sending these headers. actix's `realip_remote_addr()` trusts the leftmost
//! value blindly and is deliberately not used.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::http::header::{HeaderMap, HeaderName};
use bytes::BufMut;
use ipnetwork::IpNetwork;

/// A set of address ranges with IPv4-mapped IPv6 addresses treated as IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    nets: Vec<IpNetwork>,
}

impl IpSet {
    pub fn new(nets: Vec<IpNetwork>) -> Self {
        IpSet { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        self.nets.iter().any(|n| n.contains(ip))
    }

    pub fn nets(&self) -> &[IpNetwork] {
        &self.nets
    }

    /// True when the set admits every address of some family (`0.0.0.0/0`, `::/0`).
    pub fn covers_everything(&self) -> bool {
        self.nets.iter().any(|n| n.prefix() == 0)
    }
}

/// Parses `10.0.0.0/16`, `192.0.2.7` (a /32) or `2001:db8::/32`.
pub fn parse_net(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNetwork::from(normalize(ip)));
    }
    let net: IpNetwork = s
        .parse()
        .map_err(|_| "is not an IP address or CIDR range".to_owned())?;
    // Reject host bits set below the prefix (`10.0.0.1/16`): almost always a typo, and the
    // shape a range takes when a file is cut mid-number (`10.0.0.0/16` -> `10.0.0.0/1`).
    if net.network() != net.ip() {
        return Err(format!(
            "has host bits set below its /{} prefix (write the network address, as in \
             10.0.0.0/16)",
            net.prefix()
        ));
    }
    Ok(net)
}

/// `::ffff:10.0.0.1` is the IPv4 client 10.0.0.1 arriving on a dual-stack socket.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses one X-Forwarded-For element: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443`,
/// `192.0.2.1:5555`. Anything else (`unknown`, obfuscated ids, garbage) is `None`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(normalize(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse::<IpAddr>().ok().map(normalize);
    }
    // IPv4 with a port.
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `a.b.c.d`, written by hand: it runs on every request (audit line, rate-limit identity),
/// where `format!` and `Ipv4Addr`'s `Display` cost ten times as much.
pub fn push_ipv4(out: &mut impl BufMut, v4: Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b'.');
        }
        out.put_slice(digits.format(o).as_bytes());
    }
}

// Constants: a header looked up by &str is parsed into a name on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The client address when a trusted proxy forwarded a request whose client it names in a
/// form that cannot be read (`unknown`, garbage, bytes that are not text): no one's address.
/// It falls in no allowlist range but a catch-all one, never in `trusted_proxies` (so never
/// `/status`), and all such clients share one rate-limit identity. Before, such a client
/// counted as the proxy itself, which the allowlist and `/status` trust.
pub const UNREADABLE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Resolves the client address for one request.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet) -> IpAddr {
    let peer = normalize(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    // All X-Forwarded-For lines, in order, form one list.
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(v) => hops.extend(v.split(',')),
            // A header we cannot read: the client is behind the proxy, but who it is cannot be
            // read (see UNREADABLE).
            Err(_) => return UNREADABLE,
        }
    }
    if !hops.is_empty() {
        let mut leftmost_trusted = None;
        for raw in hops.iter().rev() {
            match parse_forwarded_addr(raw) {
                Some(ip) if trusted.contains(ip) => leftmost_trusted = Some(ip),
                Some(ip) => return ip,
                // A garbage hop: the client is somewhere behind it, unreadable. Never the
                // proxy's own address, which the allowlist and `/status` trust.
                None => return UNREADABLE,
            }
        }
        // Every hop is a trusted proxy: the leftmost one is the client.
        return leftmost_trusted.unwrap_or(peer);
    }
    if let Some(ip) = headers
        .get(X_REAL_IP)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_addr)
    {
        return ip;
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(nets.iter().filter_map(|s| parse_net(s).ok()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(*k), HeaderValue::from_str(v)) {
                h.append(name, value);
            }
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    // Vectors after nginx-tests realip.t, with trusted 127.0.0.1/32 and 10.0.1.0/24.
    #[test]
    fn nginx_realip_vectors() {
        let t = set(&["127.0.0.1/32", "10.0.1.0/24"]);
        let peer = ip("127.0.0.1");
        let cases = [
            (
                vec![("X-Forwarded-For", "10.0.0.1, 192.0.2.1")],
                "192.0.2.1",
            ),
            (
                vec![("X-Forwarded-For", "10.0.1.1, 192.0.2.1, 127.0.0.1")],
                "192.0.2.1",
            ),
            (
                vec![
                    ("X-Forwarded-For", "192.0.2.1"),
                    ("X-Forwarded-For", "127.0.0.1, 10.0.1.1"),
                ],
                "192.0.2.1",
            ),
            (
                vec![("X-Forwarded-For", "127.0.0.1, 10.0.1.1")],
                "127.0.0.1",
            ),
            (vec![("X-Real-IP", "192.0.2.9")], "192.0.2.9"),
            (
                vec![("X-Forwarded-For", "[2001:db8::5]:443")],
                "2001:db8::5",
            ),
            (vec![("X-Forwarded-For", "192.0.2.4:5555")], "192.0.2.4"),
            (vec![("X-Forwarded-For", "::ffff:192.0.2.4")], "192.0.2.4"),
            // Unlike nginx's realip (which keeps the proxy's address), an unreadable client
            // is no one's address: the proxy's would pass its allowlist entry and `/status`.
            (vec![("X-Forwarded-For", "garbage")], "0.0.0.0"),
            (
                vec![("X-Forwarded-For", "192.0.2.1, garbage, 10.0.1.7")],
                "0.0.0.0",
            ),
            (vec![("X-Forwarded-For", "unknown")], "0.0.0.0"),
            (vec![], "127.0.0.1"),
        ];
        for (h, want) in cases {
            assert_eq!(resolve(peer, &headers(&h), &t), ip(want), "headers {h:?}");
        }
    }

    #[test]
    fn untrusted_peer_gains_nothing_from_headers() {
        let t = set(&["127.0.0.1"]);
        let h = headers(&[("X-Forwarded-For", "127.0.0.1"), ("X-Real-IP", "10.0.0.1")]);
        assert_eq!(resolve(ip("203.0.113.5"), &h, &t), ip("203.0.113.5"));
    }

    #[test]
    fn mapped_v6_matches_v4_ranges() {
        let s = set(&["10.0.0.0/16"]);
        assert!(s.contains(ip("::ffff:10.0.3.4")));
        assert!(!s.contains(ip("::ffff:10.1.3.4")));
    }

    #[test]
    fn parse_net_rejects_garbage_and_host_bits() {
        assert!(parse_net("10.0.0.0/16").is_ok());
        assert!(parse_net("2001:db8::/32").is_ok());
        assert!(parse_net("10.0.0.1/16").is_err());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
        assert!(set(&["0.0.0.0/0"]).covers_everything());
    }
}
