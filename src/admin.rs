//! The daemon's HTTP endpoints: admin (localhost only), metrics, readiness.
//!
//! They run on the control runtime, apart from the data path, so a slow scrape never stalls
//! traffic. Each server is a tiny router over hyper's HTTP/1 connection handling.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

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

/// Maps a request path to a reply.
pub type Router = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr` now (so errors surface at start-up) and serves `router` on it until the task
/// is dropped.
pub async fn serve(addr: SocketAddr, name: &'static str, router: Router) -> std::io::Result<()> {
    let listener = bind_shared(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind {name} endpoint {addr}: {e}"))
    })?;
    tracing::info!(%addr, "{name} endpoint listening");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let router = router.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let reply = router(req.uri().path());
                    async move { Ok::<_, Infallible>(to_response(reply)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "{name}: connection error");
                }
            });
        }
    });
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

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    resp
}
