//! A minimal HTTP/1.1 GET for the command-line tools that talk to a daemon's local admin
//! endpoint (`ambit explain`): one request, `Connection: close`, body read to the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Replies larger than this are refused (an explanation is a few KiB).
const MAX_REPLY: u64 = 8 << 20;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No connection or no complete reply.
    #[error("admin endpoint {addr}: {source} (is the daemon running on this node?)")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The reply is not HTTP.
    #[error("admin endpoint {addr}: not an HTTP reply")]
    NotHttp {
        /// The endpoint.
        addr: SocketAddr,
    },
}

/// `GET path` on `addr`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), GetError> {
    let io = |source| GetError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reply = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut reply).map_err(io)?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or(GetError::NotHttp { addr })?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or(GetError::NotHttp { addr })?;
    Ok((status, body.to_string()))
}

/// Percent-encodes what cannot stand in one path segment of ours (`[`, `]`, `/`, `%`, space).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '[' | ']' | '/' | '%' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip() {
        for text in ["shop/web", "[fd00::5]:8080", "10.0.0.1:80", "100%"] {
            let enc = encode_segment(text);
            assert!(!enc.contains('/') && !enc.contains('['), "{enc}");
            assert_eq!(percent_decode(&enc), text);
        }
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
    }
}
