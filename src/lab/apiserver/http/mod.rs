//! HTTP side of the stand-in: connections, routing, the REST verbs, discovery documents.
//!
//! This file holds the connection side: accepting, reading a request into [`Req`], routing its
//! path, and encoding the [`Reply`]. The REST verbs on collections and objects are in `verbs`,
//! the discovery documents in `discovery`.

mod discovery;
mod verbs;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::store::{ApiError, Store};
use super::watch;
use super::{find_resource, RESOURCES};
use discovery::{api_group, api_group_list, api_versions, resource_list, root_paths, version};
use verbs::{collection, object};

/// Largest request body accepted.
const MAX_BODY: usize = 32 << 20;

type Body = BoxBody<Bytes, Infallible>;

/// State shared by every connection.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Bumped to end every open watch.
    drop_tx: tokio::sync::watch::Sender<u64>,
    /// API groups made unserved by `/standin/withdraw-group` (as if their CRDs were deleted):
    /// every path under `/apis/<group>` answers `404` until `/standin/restore-group`.
    withdrawn: Mutex<BTreeSet<String>>,
}

impl Shared {
    pub fn new(store: Store) -> Self {
        Shared {
            store: Mutex::new(store),
            drop_tx: tokio::sync::watch::Sender::new(0),
            withdrawn: Mutex::new(BTreeSet::new()),
        }
    }

    fn withdrawn(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.withdrawn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_withdrawn(&self, group: &str) -> bool {
        self.withdrawn().contains(group)
    }

    /// The store, locked (never held across an await).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    pub fn drop_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drop_tx.subscribe()
    }

    pub fn drop_watches(&self) {
        self.drop_tx.send_modify(|n| *n += 1);
    }

    pub fn expire_history(&self) -> u64 {
        let mut store = self.store();
        store.expire_history();
        store.resource_version()
    }
}

/// Accepts connections until the task is aborted; aborting it closes every connection.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stand-in API server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "stand-in API server: connection error");
    }
}

/// What a route produces.
enum Reply {
    Json(u16, Value),
    Stream(watch::ChannelBody),
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.code, e.status())
    }
}

impl From<Result<Reply, ApiError>> for Reply {
    fn from(r: Result<Reply, ApiError>) -> Self {
        r.unwrap_or_else(Reply::from)
    }
}

/// The parts of a request the routes use.
struct Req {
    method: Method,
    query: BTreeMap<String, String>,
    /// Content-Type without parameters, lowercased.
    content_type: Option<String>,
    body: Bytes,
    /// `Host` header (for `/api`'s server address).
    host: String,
}

impl Req {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or_default());
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(hyper::header::CONTENT_TYPE).map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let host = header(hyper::header::HOST).unwrap_or_default();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let err = ApiError::new(413, "RequestEntityTooLarge", format!("request body: {e}"));
            return respond(Reply::from(err));
        }
    };
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let req = Req {
        method,
        query,
        content_type,
        body,
        host,
    };
    let reply = route(shared, &segments, &req);
    if let Reply::Json(code, _) = &reply {
        tracing::debug!(method = %req.method, %path, code, "stand-in API server");
    }
    respond(reply)
}

fn respond(reply: Reply) -> Response<Body> {
    let (status, body) = match reply {
        Reply::Json(code, value) => {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            (code, Full::new(Bytes::from(bytes)).boxed())
        }
        Reply::Stream(body) => (200, body.boxed()),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn not_found() -> Reply {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .into()
}

fn method_not_allowed(method: &Method) -> Reply {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
    .into()
}

fn route(shared: &Arc<Shared>, segs: &[String], req: &Req) -> Reply {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method == Method::GET;
    match segs.as_slice() {
        [] if get => Reply::Json(200, root_paths()),
        ["version"] if get => Reply::Json(200, version()),
        ["healthz" | "livez" | "readyz"] if get => Reply::Json(200, json!("ok")),
        ["api"] if get => Reply::Json(200, api_versions(&req.host)),
        ["apis"] if get => Reply::Json(200, api_group_list()),
        ["apis", group] if get => match api_group(group) {
            Some(doc) => Reply::Json(200, doc),
            None => not_found(),
        },
        ["api", "v1"] if get => Reply::Json(200, resource_list("", "v1")),
        ["apis", group, version] if get => match find_group_version(group, version) {
            true => Reply::Json(200, resource_list(group, version)),
            false => not_found(),
        },
        ["standin", "drop-watches"] if req.method == Method::POST => {
            shared.drop_watches();
            Reply::Json(200, json!({"dropped": true}))
        }
        ["standin", "expire-history"] if req.method == Method::POST => {
            let rv = shared.expire_history();
            Reply::Json(200, json!({"resourceVersion": rv.to_string()}))
        }
        ["standin", verb @ ("withdraw-group" | "restore-group")] if req.method == Method::POST => {
            let Some(group) = req.param("group").filter(|g| !g.is_empty()) else {
                let msg = "query parameter `group` (an API group name) is required";
                return ApiError::new(400, "BadRequest", msg).into();
            };
            let served = *verb == "restore-group";
            if served {
                shared.withdrawn().remove(group);
            } else {
                shared.withdrawn().insert(group.to_string());
                // Open watches of the group end, as when a real server stops serving a CRD.
                shared.drop_watches();
            }
            Reply::Json(200, json!({"group": group, "served": served}))
        }
        ["standin", ..] => not_found(),
        ["apis", group, ..] if shared.is_withdrawn(group) => not_found(),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] if req.method == Method::POST => {
            let registry = shared
                .store()
                .state_file()
                .map(|f| f.with_file_name(super::tokenreview::TOKENS_FILE));
            let (code, value) = super::tokenreview::review(
                registry.as_deref(),
                &req.body,
                std::time::SystemTime::now(),
            );
            Reply::Json(code, value)
        }
        ["api", "v1", rest @ ..] => resource_route(shared, "", "v1", rest, req),
        ["apis", group, version, rest @ ..] => resource_route(shared, group, version, rest, req),
        _ if !get => method_not_allowed(&req.method),
        _ => not_found(),
    }
}

fn find_group_version(group: &str, version: &str) -> bool {
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == version && !group.is_empty())
}

/// Routes `/api/v1/<rest>` and `/apis/<group>/<version>/<rest>`.
fn resource_route(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: &Req,
) -> Reply {
    let res = |plural: &str| find_resource(group, version, plural);
    let cluster_scoped = |plural: &str| res(plural).filter(|i| !RESOURCES[*i].namespaced);
    let namespaced = |plural: &str| res(plural).filter(|i| RESOURCES[*i].namespaced);
    match rest {
        [plural] => match res(plural) {
            Some(r) => collection(shared, r, None, req),
            None => not_found(),
        },
        [plural, name] => match cluster_scoped(plural) {
            Some(r) => object(shared, r, "", name, req),
            None => not_found(),
        },
        [plural, name, "status"] => match cluster_scoped(plural) {
            Some(r) => object(shared, r, "", name, req),
            None => not_found(),
        },
        ["namespaces", ns, plural] => match namespaced(plural) {
            Some(r) => collection(shared, r, Some(ns), req),
            None => not_found(),
        },
        ["namespaces", ns, plural, name] | ["namespaces", ns, plural, name, "status"] => {
            match namespaced(plural) {
                Some(r) => object(shared, r, ns, name, req),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// `%XX` decoding (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
