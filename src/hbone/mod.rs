//! HBONE: TCP tunnelled in HTTP/2 CONNECT over mutual TLS, wire-compatible with Istio's
//! ztunnel (see `docs/hbone.md` for the wire format and the facts it relies on).
//!
//! - [`pool`]: the client side; pooled, multiplexed connections from one pod to peers;
//! - [`server`]: the 15008 side; terminates tunnels and connects to the app;
//! - [`stream`]: copying between TCP and tunnel streams with half-close;
//! - [`keepalive`]: HTTP/2 PING keepalive, so a dead peer is noticed within about 30 s.

pub mod early;
pub mod keepalive;
pub mod pool;
pub mod server;
pub mod stream;

use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Method, Request};

/// What a CONNECT request carries besides its target.
#[derive(Clone, Debug)]
pub struct TunnelRequest {
    /// Original destination (the `:authority`).
    pub target: SocketAddr,
    /// The app client's address, sent as `forwarded: for="…"`.
    pub client: SocketAddr,
    /// `baggage` entries (`k8s.namespace.name=…` etc.).
    pub baggage: Vec<(String, String)>,
}

/// `ip:port`, with brackets for IPv6, as HBONE's `:authority` spells a socket address.
pub fn authority(addr: SocketAddr) -> String {
    addr.to_string()
}

/// Builds the CONNECT request for a tunnel.
pub fn build_request(t: &TunnelRequest) -> Result<Request<()>, http::Error> {
    let baggage = t
        .baggage
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(t.target))
        .header("forwarded", format!("for=\"{}\"", t.client))
        .header("traceparent", &traceparent()[..]);
    if !baggage.is_empty() {
        req = req.header("baggage", baggage);
    }
    req.body(())
}

/// Why a CONNECT request is refused, with the HTTP status it maps to.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    /// No authority, or not `ip:port`.
    #[error("authority {0:?} is not ip:port")]
    BadAuthority(String),
}

/// The target `ip:port` of a CONNECT request.
pub fn parse_target<B>(req: &Request<B>) -> Result<SocketAddr, RequestError> {
    if req.method() != Method::CONNECT {
        return Err(RequestError::NotConnect(req.method().to_string()));
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    authority
        .parse::<SocketAddr>()
        .map(crate::socket::canonical)
        .map_err(|_| RequestError::BadAuthority(authority.to_string()))
}

/// The client address of a `forwarded: for="ip:port"` header, if present and well-formed.
pub fn forwarded_for(value: Option<&HeaderValue>) -> Option<SocketAddr> {
    let text = value?.to_str().ok()?;
    text.split([';', ','])
        .filter_map(|part| part.trim().strip_prefix("for="))
        .map(|v| v.trim_matches('"'))
        .find_map(|v| {
            v.parse::<SocketAddr>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
        })
}

/// A W3C `traceparent` with a random trace id and span id, sampled flag off:
/// `00-<32 hex>-<16 hex>-00`. Built once per CONNECT, so without a syscall or an allocation
/// per byte.
fn traceparent() -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let ids = [next_random(), next_random(), next_random()];
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let digits = ids
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    let places = (3..35).chain(36..52);
    for (place, digit) in places.zip(digits) {
        text[place] = digit;
    }
    text
}

thread_local! {
    /// Per-thread state of [`next_random`], seeded once from the kernel's CSPRNG.
    static TRACE_RANDOM: std::cell::Cell<u64> = std::cell::Cell::new(seed());
}

/// A seed from the kernel's CSPRNG. Trace ids need uniqueness, not secrecy; on the
/// (practically impossible) failure the thread's ids are merely predictable.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    let _ = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u64::from_ne_bytes(buf)
}

/// The next value of this thread's splitmix64 sequence (distinct for 2^64 calls).
fn next_random() -> u64 {
    let state = TRACE_RANDOM.with(|s| {
        let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(next);
        next
    });
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> TunnelRequest {
        TunnelRequest {
            target: "[fd00::2]:8080".parse().unwrap(),
            client: "[fd00::1]:4000".parse().unwrap(),
            baggage: vec![
                ("k8s.namespace.name".into(), "shop".into()),
                ("k8s.pod.name".into(), "".into()),
            ],
        }
    }

    #[test]
    fn request_has_the_hbone_shape() {
        let r = build_request(&req()).unwrap();
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri().authority().unwrap().as_str(), "[fd00::2]:8080");
        assert_eq!(r.headers()["forwarded"], "for=\"[fd00::1]:4000\"");
        assert_eq!(r.headers()["baggage"], "k8s.namespace.name=shop");
        let tp = r.headers()["traceparent"].to_str().unwrap();
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
        assert_eq!(parse_target(&r).unwrap(), "[fd00::2]:8080".parse().unwrap());
        assert_eq!(
            forwarded_for(r.headers().get("forwarded")),
            Some("[fd00::1]:4000".parse().unwrap())
        );
    }

    #[test]
    fn trace_ids_are_lowercase_hex_and_differ_per_request() {
        let (a, b) = (traceparent(), traceparent());
        assert_ne!(a[3..52], b[3..52]);
        for t in [a, b] {
            let text = std::str::from_utf8(&t).expect("ASCII");
            let parts: Vec<_> = text.split('-').collect();
            assert_eq!(parts.len(), 4, "{text}");
            for id in &parts[1..3] {
                assert!(id
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
                assert!(
                    id.bytes().any(|c| c != b'0'),
                    "an all-zero id is invalid: {text}"
                );
            }
        }
    }

    #[test]
    fn bad_requests_are_named() {
        let r = Request::builder()
            .method(Method::GET)
            .uri("http://x/")
            .body(())
            .unwrap();
        assert_eq!(
            parse_target(&r),
            Err(RequestError::NotConnect("GET".into()))
        );
        let r = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:80")
            .body(())
            .unwrap();
        assert_eq!(
            parse_target(&r),
            Err(RequestError::BadAuthority("example.com:80".into()))
        );
    }

    #[test]
    fn forwarded_variants() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            forwarded_for(Some(&v("for=10.0.0.1"))),
            Some("10.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            forwarded_for(Some(&v("host=a;for=\"10.0.0.1:5\""))),
            Some("10.0.0.1:5".parse().unwrap())
        );
        assert_eq!(forwarded_for(Some(&v("for=unknown"))), None);
        assert_eq!(forwarded_for(None), None);
    }
}
