//! A minimal HTTP/1.1 client for the lab: one `GET` from inside a network namespace, and a
//! response parser for Content-Length, chunked and read-to-end bodies.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::netns::NetNs;

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, lossily decoded as UTF-8.
    pub body: String,
}

/// `GET path` against `127.0.0.1:port` inside `ns`, with a minimal HTTP/1.1 client.
pub(crate) fn http_get(
    ns: &NetNs,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    http_get_addr(
        ns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        path,
        timeout,
    )
}

/// `GET path` against `addr` from inside `ns`.
pub(crate) fn http_get_addr(
    ns: &NetNs,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    // The socket belongs to the namespace it is created in; connect and I/O happen afterwards
    // on this thread in its own namespace.
    let socket = ns
        .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, None))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&buf, false)? {
            return Ok(resp);
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A signal to this process (SIGCHLD of a lab process, whose handler tokio installs)
            // interrupts a read with a timeout even under SA_RESTART.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    parse_response(&buf, true)?.ok_or_else(|| "connection closed before a response".to_string())
}

/// Parses `buf` as a complete response; `None` while more bytes are needed. With `eof` a body
/// without length runs to the end of the data.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        match decode_chunked(body) {
            Some(body) => body,
            None if eof => return Err("truncated chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(len) = length {
        if body.len() < len {
            return if eof {
                Err(format!("body truncated at {} of {len} bytes", body.len()))
            } else {
                Ok(None)
            };
        }
        body[..len].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        assert_eq!(r.unwrap().unwrap().body, "ok");
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok";
        assert_eq!(parse_response(partial, false).unwrap(), None);
        assert!(parse_response(partial, true).is_err());
        let chunked =
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        let eof = b"HTTP/1.0 200 OK\r\n\r\nrest";
        assert_eq!(parse_response(eof, false).unwrap(), None);
        assert_eq!(parse_response(eof, true).unwrap().unwrap().body, "rest");
    }
}
