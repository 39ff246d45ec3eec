//! The daemon's HTTP endpoints: admin (localhost only), metrics, readiness.
//!
//! They run on the control runtime, apart from the data path, so a slow scrape never stalls
//! traffic. Each server is a tiny router over hyper's HTTP/1 connection handling.
//!
//! Metrics and readiness listen on the node's addresses, so every connection is bounded
//! ([`EndpointLimits`]): the request head must arrive within a timeout and fit a small
//! buffer, a request may carry no body, each connection serves one request and lives a
//! bounded time, and each server holds a bounded number of connections, making room for a
//! new one by closing the oldest idle one ([`slots`]).
//!
//! Routes see the method, the path and the query string ([`Request`]); each route names the
//! parameters it takes and anything else is refused with a 400 naming it ([`query`]). Only
//! the admin endpoint has routes that change something (`POST /logging`); the others are
//! wrapped in [`read_only`], which refuses POST and every parameter.

pub mod client;
pub mod query;
mod slots;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;

pub use client::percent_decode;

use crate::config::{
    ENDPOINT_CONNECTION_LIFETIME, ENDPOINT_HEADER_READ_TIMEOUT, ENDPOINT_MAX_CONNECTIONS,
    ENDPOINT_MAX_HEADERS, ENDPOINT_MAX_REQUEST_HEAD,
};

/// hyper refuses (panics on) a read buffer smaller than this.
const HYPER_MIN_BUFFER: usize = 8 * 1024;

/// A response from a route: status, content type, body.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Content-Type header.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(value: &impl serde::Serialize) -> Reply {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Reply::new(StatusCode::OK, "application/json", body),
            Err(e) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}\n")),
        }
    }

    /// Plain text.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body)
    }

    fn new(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// A request as a route sees it. Requests never carry a body (see `refusal`).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// GET, HEAD or POST.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string after `?` (empty if none).
    pub query: &'a str,
}

impl Request<'_> {
    /// The query, parsed accepting only `allowed`, or the 400 reply that names what is wrong.
    pub fn params(&self, allowed: &[&'static str]) -> Result<query::Query, Reply> {
        query::Query::parse(self.query, allowed)
            .map_err(|e| Reply::text(StatusCode::BAD_REQUEST, format!("{}: {e}\n", self.path)))
    }

    /// Whether the request asks for a change (POST).
    pub fn is_post(&self) -> bool {
        self.method == Method::POST
    }
}

/// Maps a request to a reply.
pub type Router = Arc<dyn Fn(&Request<'_>) -> Reply + Send + Sync>;

/// A router of read-only routes that take no parameters, chosen by path alone: POST gets
/// 405 and any query parameter a 400 naming it.
pub fn read_only(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Router {
    Arc::new(move |req| {
        if req.is_post() {
            return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match req.params(&[]) {
            Ok(_) => route(req.path),
            Err(reply) => reply,
        }
    })
}

/// The bounds every connection of an endpoint server lives within (defaults: the
/// `ENDPOINT_*` constants of [`crate::config`], where each is explained).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Time to send the whole request head.
    pub header_read_timeout: Duration,
    /// Longest life of a connection, reply included.
    pub connection_lifetime: Duration,
    /// Connections held at once.
    pub max_connections: usize,
    /// Largest request head in bytes.
    pub max_request_head: usize,
    /// Most header fields.
    pub max_headers: usize,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            header_read_timeout: ENDPOINT_HEADER_READ_TIMEOUT,
            connection_lifetime: ENDPOINT_CONNECTION_LIFETIME,
            max_connections: ENDPOINT_MAX_CONNECTIONS,
            max_request_head: ENDPOINT_MAX_REQUEST_HEAD,
            max_headers: ENDPOINT_MAX_HEADERS,
        }
    }
}

/// Binds `addr` now (so errors surface at start-up) and serves `router` on it, within the
/// default [`EndpointLimits`], until the task is dropped.
pub async fn serve(addr: SocketAddr, name: &'static str, router: Router) -> std::io::Result<()> {
    let listener = bind_shared(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind {name} endpoint {addr}: {e}"))
    })?;
    tracing::info!(%addr, "{name} endpoint listening");
    tokio::spawn(serve_listener(
        listener,
        name,
        router,
        EndpointLimits::default(),
    ));
    Ok(())
}

/// Binds with SO_REUSEPORT: during an upgrade the next daemon binds the node's ports while
/// this one still serves them (both run as the same user, which the kernel requires).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves `router` on connections accepted from `listener`, within `limits`, forever.
pub async fn serve_listener(
    listener: TcpListener,
    name: &'static str,
    router: Router,
    limits: EndpointLimits,
) {
    let slots = slots::Slots::new(limits.max_connections);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, or the peer gave up before accept: try again shortly.
                tracing::warn!(error = %e, "{name}: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (ticket, evicted) = slots.admit();
        if evicted {
            tracing::debug!(%peer, "{name}: at {} connections, closed the oldest idle one", limits.max_connections);
        }
        let router = router.clone();
        tokio::spawn(async move {
            let mut ticket = ticket;
            let busy = ticket.busy.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                busy.store(true, Ordering::Release);
                let reply = refusal(&req).unwrap_or_else(|| {
                    router(&Request {
                        method: req.method(),
                        path: req.uri().path(),
                        query: req.uri().query().unwrap_or(""),
                    })
                });
                async move { Ok::<_, Infallible>(to_response(reply)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = builder(&limits).serve_connection(io, service);
            tokio::select! {
                r = tokio::time::timeout(limits.connection_lifetime, conn) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "{name}: connection error"),
                    Err(_) => tracing::debug!(%peer, "{name}: connection outlived {:?}, closed", limits.connection_lifetime),
                },
                // Only an eviction completes this (the sender is dropped, never used).
                _ = &mut ticket.evicted => tracing::debug!(%peer, "{name}: evicted to make room"),
            }
            drop(ticket);
        });
    }
}

/// hyper's HTTP/1 settings for one endpoint connection.
fn builder(limits: &EndpointLimits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // One request per connection: no idle keep-alive connection to bound.
        .keep_alive(false)
        .max_buf_size(limits.max_request_head.max(HYPER_MIN_BUFFER))
        .max_header_size(limits.max_request_head)
        .max_headers(limits.max_headers);
    b
}

/// The reply to a request the endpoints do not take: another method than GET/HEAD/POST
/// (405; whether a route takes POST is the route's business), or a body (413: nothing here
/// reads one, a POST's parameters are in its query as with Envoy's and ztunnel's admin).
fn refusal(req: &hyper::Request<Incoming>) -> Option<Reply> {
    if ![Method::GET, Method::HEAD, Method::POST].contains(req.method()) {
        return Some(Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, HEAD and POST\n",
        ));
    }
    let headers = req.headers();
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    if declared || headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        return Some(Reply::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests carry no body here\n",
        ));
    }
    None
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    resp
}
