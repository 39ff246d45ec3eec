//! Sockets inside a pod's network namespace: marked listeners, marked (optionally
//! source-preserving) dialers, and original-destination recovery.
//!
//! Every socket the daemon creates in a pod carries `SO_MARK 0x539`; the redirect rules skip
//! marked packets, which is what keeps the daemon's own traffic from being captured again.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{
    LISTEN_BACKLOG, MARK, SIDECAR_INBOUND_SOURCE_V4, SIDECAR_INBOUND_SOURCE_V6,
    TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_RETRIES, TCP_KEEPALIVE_TIME,
};
use crate::netns::{NetNs, NetNsError};

/// Errors from creating sockets inside a pod.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Could not enter the namespace.
    #[error(transparent)]
    Netns(#[from] NetNsError),
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// Which step failed, with its address.
        what: String,
        /// Underlying error.
        source: io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Io { what, source }
}

/// Where the proxy of a pod lives, which decides how its sockets are made.
#[derive(Clone, Debug)]
pub enum Placement {
    /// Ambient: the node's daemon serves the pod from outside. Sockets are created inside the
    /// pod's namespace and marked `0x539` so the pod's rules let them through; connections to
    /// the app keep the client's IP (IP_TRANSPARENT).
    Ambient(NetNs),
    /// Sidecar: the proxy process lives in the pod's namespace as the proxy user (UID 1337),
    /// which the rules let through by owner; connections to the app come from 127.0.0.6
    /// (`::6` for IPv6), as Envoy's inbound passthrough does.
    Sidecar,
}

impl Placement {
    /// Binds a TCP listener on `port` for every address of the pod (dual-stack `[::]`, or
    /// `0.0.0.0` when the pod has no IPv6).
    pub fn listen(&self, port: u16) -> Result<std::net::TcpListener, SocketError> {
        self.within(|| {
            match self.new_socket(Domain::IPV6) {
                Ok(s) => {
                    s.set_only_v6(false)
                        .map_err(step("clear IPV6_V6ONLY on listener"))?;
                    bind_listen(s, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                }
                // IPv6 disabled in this pod: serve IPv4 only.
                Err(_) => bind_listen(
                    self.new_socket(Domain::IPV4)?,
                    SocketAddr::from(([0, 0, 0, 0], port)),
                ),
            }
        })
    }

    /// Connects from the pod to `dst`, optionally from `source` (see [`Placement::app_source`]).
    pub async fn connect(
        &self,
        dst: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<TcpStream, SocketError> {
        let socket = self.within(|| -> Result<TcpSocket, SocketError> {
            let s = self.new_socket(Domain::for_address(dst))?;
            s.set_nodelay(true).map_err(step("set TCP_NODELAY"))?;
            set_keepalive(&s).map_err(step("set TCP keepalive"))?;
            if let Some(ip) = source {
                if matches!(self, Placement::Ambient(_)) {
                    set_transparent(&s, ip)?;
                }
                let src = SocketAddr::new(ip, 0);
                s.bind(&SockAddr::from(src))
                    .map_err(step(format!("bind source address {src}")))?;
            }
            s.set_nonblocking(true).map_err(step("set non-blocking"))?;
            Ok(TcpSocket::from_std_stream(s.into()))
        })?;
        socket
            .connect(dst)
            .await
            .map_err(step(format!("connect to {dst}")))
    }

    /// The source address for a connection to the app at `app` on behalf of `client`:
    /// ambient keeps the client's IP (unless the pod is calling itself); a sidecar uses
    /// 127.0.0.6 / ::6.
    pub fn app_source(&self, client: IpAddr, app: IpAddr) -> Option<IpAddr> {
        match self {
            Placement::Ambient(_) => (client != app).then_some(client),
            Placement::Sidecar if app.is_ipv4() => Some(SIDECAR_INBOUND_SOURCE_V4.into()),
            Placement::Sidecar => Some(SIDECAR_INBOUND_SOURCE_V6.into()),
        }
    }

    /// Runs `make` where the pod's sockets must be created.
    fn within<T>(&self, make: impl FnOnce() -> Result<T, SocketError>) -> Result<T, SocketError> {
        match self {
            Placement::Ambient(ns) => ns.run(make)?,
            Placement::Sidecar => make(),
        }
    }

    fn new_socket(&self, domain: Domain) -> Result<Socket, SocketError> {
        let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))
            .map_err(step("create socket"))?;
        if matches!(self, Placement::Ambient(_)) {
            s.set_mark(MARK)
                .map_err(step("set SO_MARK 0x539 (needs CAP_NET_ADMIN)"))?;
        }
        Ok(s)
    }
}

/// TCP keepalive on a proxied socket, so a peer that vanished without a FIN or RST does not
/// hold the connection (and its file descriptor) for hours.
pub fn set_keepalive(s: &Socket) -> io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_TIME)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    s.set_tcp_keepalive(&keepalive)
}

/// `TCP_NODELAY` and [`set_keepalive`] on an accepted connection.
pub fn tune_accepted(stream: &TcpStream) {
    let s = socket2::SockRef::from(stream);
    // Failures here only cost latency or an idle connection's lifetime; the connection works.
    let _ = s.set_nodelay(true);
    let _ = set_keepalive(&s);
}

/// Closes a connection with RST instead of FIN (SO_LINGER 0): used when refusing or cutting
/// a connection, so the peer learns at once that it did not end normally, and no TIME_WAIT
/// state is left behind.
pub fn close_with_reset(stream: TcpStream) {
    abort_on_close(&stream);
    drop(stream);
}

/// Makes the close of `stream`, whenever it is dropped, abortive (see [`close_with_reset`]).
pub fn abort_on_close(stream: &TcpStream) {
    // Best effort: if the option cannot be set, the close is an ordinary FIN.
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

fn bind_listen(s: Socket, addr: SocketAddr) -> Result<std::net::TcpListener, SocketError> {
    // SO_REUSEPORT lets an old and a new daemon hold the pod's ports during an upgrade.
    s.set_reuse_address(true)
        .map_err(step("set SO_REUSEADDR on listener"))?;
    s.set_reuse_port(true)
        .map_err(step("set SO_REUSEPORT on listener"))?;
    s.bind(&SockAddr::from(addr))
        .map_err(step(format!("bind {addr}")))?;
    s.listen(LISTEN_BACKLOG)
        .map_err(step(format!("listen on {addr}")))?;
    s.set_nonblocking(true)
        .map_err(step("set listener non-blocking"))?;
    Ok(s.into())
}

/// Allows binding to an address the namespace does not own (the client's).
fn set_transparent(s: &Socket, ip: IpAddr) -> Result<(), SocketError> {
    let what = "set IP_TRANSPARENT (needs CAP_NET_ADMIN)";
    match ip {
        IpAddr::V4(_) => {
            s.set_ip_transparent(true).map_err(step(what))?;
            s.set_freebind(true).map_err(step("set IP_FREEBIND"))?;
        }
        IpAddr::V6(_) => {
            setsockopt_int(s, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1).map_err(step(what))?;
            s.set_freebind_ipv6(true)
                .map_err(step("set IPV6_FREEBIND"))?;
        }
    }
    Ok(())
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // socket2 has no IPV6_TRANSPARENT setter.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The destination the client asked for before REDIRECT rewrote it: `SO_ORIGINAL_DST` for IPv4,
/// `IP6T_SO_ORIGINAL_DST` for IPv6, else the local address (connection was not redirected).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if let Ok(v4) = getsockopt(stream, sockopt::OriginalDst) {
        let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        return Ok(SocketAddr::from((ip, u16::from_be(v4.sin_port))));
    }
    if let Ok(v6) = getsockopt(stream, sockopt::Ip6tOriginalDst) {
        let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
        return Ok(canonical(SocketAddr::from((
            ip,
            u16::from_be(v6.sin6_port),
        ))));
    }
    stream.local_addr().map(canonical)
}

/// Turns IPv4-mapped IPv6 addresses (seen on dual-stack listeners) back into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
