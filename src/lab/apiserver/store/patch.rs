//! PATCH bodies: the RFC 7386 JSON merge patch (which also stands in for strategic merge patch
//! and server-side apply) and RFC 6902 JSON patch operations.

use serde_json::{json, Value};

use super::ApiError;

/// A parsed PATCH body.
pub(crate) enum Patch {
    /// JSON merge patch (also used for strategic merge patch and apply).
    Merge(Value),
    /// JSON patch (RFC 6902) operations.
    Json(Vec<Value>),
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Removes `null` members (a merge patch used as a new object).
pub(crate) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub(super) fn json_patch(doc: &mut Value, ops: &[Value]) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("json patch operation without path: {op}")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("json patch {kind} without value: {op}")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("json patch {kind} without from: {op}")))
        };
        match kind {
            "add" => pointer_add(doc, path, value()?).map_err(bad)?,
            "remove" => {
                pointer_remove(doc, path).map_err(bad)?;
            }
            "replace" => {
                let v = value()?;
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| bad(format!("json patch replace: {path} does not exist")))?;
                *slot = v;
            }
            "move" => {
                let v = pointer_remove(doc, from()?).map_err(bad)?;
                pointer_add(doc, path, v).map_err(bad)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| bad(format!("json patch copy: {op} source does not exist")))?;
                pointer_add(doc, path, v).map_err(bad)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(bad(format!("json patch test failed at {path}")));
                }
            }
            other => return Err(bad(format!("unknown json patch operation {other:?}"))),
        }
    }
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("bad JSON pointer {path:?}"))?;
    let token = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..idx], token))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            if token == "-" {
                items.push(value);
                return Ok(());
            }
            let i: usize = token
                .parse()
                .map_err(|_| format!("bad array index in {path}"))?;
            if i > items.len() {
                return Err(format!("array index out of range in {path}"));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!("json patch add: parent of {path} does not exist")),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map
            .remove(&token)
            .ok_or_else(|| format!("json patch remove: {path} does not exist")),
        Some(Value::Array(items)) => {
            let i: usize = token
                .parse()
                .map_err(|_| format!("bad array index in {path}"))?;
            if i >= items.len() {
                return Err(format!("array index out of range in {path}"));
            }
            Ok(items.remove(i))
        }
        _ => Err(format!("json patch remove: {path} does not exist")),
    }
}
