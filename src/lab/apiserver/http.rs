//! HTTP side of the stand-in: connections, routing, the REST verbs, discovery documents.

use std::collections::BTreeMap;
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

use super::select::Filter;
use super::store::{strip_nulls, ApiError, Patch, Start, Store};
use super::watch::{self, WatchParams};
use super::{find_resource, ResourceType, RESOURCES, VERSION};

/// Largest request body accepted.
const MAX_BODY: usize = 32 << 20;
/// `timeoutSeconds` of a watch that does not give one (the real server picks 30..60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

type Body = BoxBody<Bytes, Infallible>;

/// State shared by every connection.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Bumped to end every open watch.
    drop_tx: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn new(store: Store) -> Self {
        Shared {
            store: Mutex::new(store),
            drop_tx: tokio::sync::watch::Sender::new(0),
        }
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
        ["standin", ..] => not_found(),
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

/// A collection: list, watch, create, delete-collection.
fn collection(shared: &Arc<Shared>, res: usize, ns: Option<&str>, req: &Req) -> Reply {
    let rt = &RESOURCES[res];
    let result = (|| -> Result<Reply, ApiError> {
        let filter = Filter::new(
            res,
            ns,
            None,
            req.param("fieldSelector"),
            req.param("labelSelector"),
        )?;
        match req.method {
            Method::GET if req.flag("watch") => watch(shared, res, filter, req),
            Method::GET => list(shared, res, ns, &filter, req),
            Method::POST => {
                refuse_dry_run(req)?;
                let Some(ns) = ns.or((!rt.namespaced).then_some("")) else {
                    return Ok(method_not_allowed(&req.method));
                };
                let body = json_body(req)?;
                let created = shared.store().create(res, ns, body)?;
                Ok(Reply::Json(201, (*created).clone()))
            }
            Method::DELETE => {
                refuse_dry_run(req)?;
                let mut store = shared.store();
                let (items, _) = store.list(res, ns, &filter);
                let mut deleted = Vec::new();
                for obj in items {
                    let ns = super::store::meta_str(&obj, "namespace").unwrap_or_default();
                    let name = super::store::meta_str(&obj, "name").unwrap_or_default();
                    deleted.push((*store.delete(res, ns, name, None)?).clone());
                }
                let rv = store.resource_version();
                Ok(Reply::Json(200, list_doc(rt, deleted, rv)))
            }
            _ => Ok(method_not_allowed(&req.method)),
        }
    })();
    result.into()
}

/// One object: get (or watch it), replace, patch, delete.
fn object(shared: &Arc<Shared>, res: usize, ns: &str, name: &str, req: &Req) -> Reply {
    let result = (|| -> Result<Reply, ApiError> {
        match req.method {
            Method::GET if req.flag("watch") => {
                let ns = RESOURCES[res].namespaced.then_some(ns);
                let filter = Filter::new(
                    res,
                    ns,
                    Some(name),
                    req.param("fieldSelector"),
                    req.param("labelSelector"),
                )?;
                watch(shared, res, filter, req)
            }
            Method::GET => Ok(Reply::Json(
                200,
                (*shared.store().get(res, ns, name)?).clone(),
            )),
            Method::PUT => {
                refuse_dry_run(req)?;
                let body = json_body(req)?;
                let obj = shared.store().replace(res, ns, name, body)?;
                Ok(Reply::Json(200, (*obj).clone()))
            }
            Method::PATCH => {
                refuse_dry_run(req)?;
                let (patch, apply) = patch_body(req)?;
                let obj = shared.store().patch(res, ns, name, &patch, apply)?;
                Ok(Reply::Json(200, (*obj).clone()))
            }
            Method::DELETE => {
                refuse_dry_run(req)?;
                let options: Option<Value> = if req.body.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    Some(serde_json::from_slice(&req.body).map_err(|e| {
                        ApiError::bad_request(format!("DeleteOptions could not be decoded: {e}"))
                    })?)
                };
                let pre = options.as_ref().and_then(|o| o.get("preconditions"));
                let obj = shared.store().delete(res, ns, name, pre)?;
                Ok(Reply::Json(200, (*obj).clone()))
            }
            _ => Ok(method_not_allowed(&req.method)),
        }
    })();
    result.into()
}

fn refuse_dry_run(req: &Req) -> Result<(), ApiError> {
    match req.param("dryRun") {
        Some(_) => Err(ApiError::bad_request(
            "dryRun is not supported by the stand-in API server",
        )),
        None => Ok(()),
    }
}

/// A resourceVersion query parameter: absent/empty, or an integer.
fn parse_rv(req: &Req) -> Result<Option<u64>, ApiError> {
    match req.param("resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::new(
                400,
                "BadRequest",
                format!("resourceVersion: Invalid value: \"{s}\": must be an integer"),
            )
        }),
    }
}

fn list(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<&str>,
    filter: &Filter,
    req: &Req,
) -> Result<Reply, ApiError> {
    let rv = parse_rv(req)?;
    let store = shared.store();
    let current = store.resource_version();
    if req.param("resourceVersionMatch") == Some("Exact") {
        match rv {
            Some(rv) if rv == current => {}
            Some(rv) => return Err(ApiError::expired(rv, current)),
            None => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ))
            }
        }
    }
    let (items, rv) = store.list(res, ns, filter);
    drop(store);
    // As from a real server, list items carry no kind/apiVersion of their own.
    let items = items
        .iter()
        .map(|obj| {
            let mut obj = (**obj).clone();
            if let Some(map) = obj.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            obj
        })
        .collect();
    Ok(Reply::Json(200, list_doc(&RESOURCES[res], items, rv)))
}

fn list_doc(rt: &ResourceType, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn watch(shared: &Arc<Shared>, res: usize, filter: Filter, req: &Req) -> Result<Reply, ApiError> {
    let rv = parse_rv(req)?;
    let bookmarks = req.flag("allowWatchBookmarks");
    let initial = req.flag("sendInitialEvents");
    if initial {
        if req.param("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::new(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(ApiError::new(
                422,
                "Invalid",
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    }
    let start = match rv {
        _ if initial => Start::Current,
        None | Some(0) => Start::Current,
        Some(rv) => Start::After(rv),
    };
    let timeout = match req.param("timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH_TIMEOUT,
        Some(s) => Duration::from_secs(s.parse().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: Invalid value: \"{s}\""))
        })?),
    };
    let params = WatchParams {
        res,
        filter,
        start,
        bookmarks,
        initial_events_end: initial,
        timeout,
    };
    Ok(Reply::Stream(watch::start(shared, params)))
}

/// The body of a POST or PUT: JSON only.
fn json_body(req: &Req) -> Result<Value, ApiError> {
    match req.content_type.as_deref() {
        None | Some("application/json") => {}
        Some(other) => return Err(unsupported_media(other, "application/json")),
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

fn unsupported_media(got: &str, accepted: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format ({got}) - accepted media types include: {accepted}"),
    )
}

/// The body of a PATCH by its content type; `true` for apply (creates a missing object).
fn patch_body(req: &Req) -> Result<(Patch, bool), ApiError> {
    const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (JSON content)";
    let parse = || -> Result<Value, ApiError> {
        serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}"))
        })
    };
    match req.content_type.as_deref() {
        Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
            Ok((Patch::Merge(parse()?), false))
        }
        Some("application/apply-patch+yaml") => {
            // kube-rs sends apply patches as JSON (a subset of YAML); real YAML is refused.
            let mut body = serde_json::from_slice::<Value>(&req.body)
                .map_err(|_| unsupported_media("application/apply-patch+yaml (YAML)", ACCEPTED))?;
            strip_nulls(&mut body);
            Ok((Patch::Merge(body), true))
        }
        Some("application/json-patch+json") => match parse()? {
            Value::Array(ops) => Ok((Patch::Json(ops), false)),
            _ => Err(ApiError::bad_request(
                "a JSON patch must be an array of operations",
            )),
        },
        Some(other) => Err(unsupported_media(other, ACCEPTED)),
        None => Err(unsupported_media("none", ACCEPTED)),
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

// Discovery documents.

fn root_paths() -> Value {
    let mut paths = vec!["/api".to_string(), "/api/v1".into(), "/apis".into()];
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        for p in [
            format!("/apis/{}", r.group),
            format!("/apis/{}", r.api_version()),
        ] {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths.extend([
        "/healthz".into(),
        "/livez".into(),
        "/readyz".into(),
        "/version".into(),
    ]);
    json!({ "paths": paths })
}

fn version() -> Value {
    let (major, minor) = VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-ambit-standin"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (ambit stand-in API server)",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

fn api_versions(host: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })
}

/// Groups other than core, in table order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

fn api_group(group: &str) -> Option<Value> {
    let versions: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && !group.is_empty())
        .map(|r| json!({"groupVersion": r.api_version(), "version": r.version}))
        .fold(Vec::new(), |mut acc, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        });
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": preferred,
    }))
}

fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter_map(api_group)
        .map(|mut g| {
            if let Some(m) = g.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    const VERBS: [&str; 8] = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if matches!(r.kind, "Pod" | "Namespace" | "Service") {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
