//! The REST verbs of the stand-in: list, watch, create and delete-collection on a collection;
//! get, replace, patch and delete on one object; and decoding their query parameters and
//! bodies.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use super::super::select::Filter;
use super::super::store::{strip_nulls, ApiError, Patch, Start};
use super::super::watch::{self, WatchParams};
use super::super::{ResourceType, RESOURCES};
use super::{method_not_allowed, Reply, Req, Shared};

/// `timeoutSeconds` of a watch that does not give one (the real server picks 30..60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A collection: list, watch, create, delete-collection.
pub(super) fn collection(shared: &Arc<Shared>, res: usize, ns: Option<&str>, req: &Req) -> Reply {
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
                    let ns = super::super::store::meta_str(&obj, "namespace").unwrap_or_default();
                    let name = super::super::store::meta_str(&obj, "name").unwrap_or_default();
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
pub(super) fn object(shared: &Arc<Shared>, res: usize, ns: &str, name: &str, req: &Req) -> Reply {
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
