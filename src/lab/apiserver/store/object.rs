//! Object metadata as the store checks and defaults it: the `metadata` map itself, kind and
//! apiVersion, namespace, name, empty maps left out, and the uid, generated-name suffix and
//! timestamp a new object gets.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::super::ResourceType;
use super::ApiError;

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The body's `metadata` object (created when missing); a body that is not an object is a 400.
pub(super) fn metadata_mut(body: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

/// Leaves out empty metadata maps and lists, as the real server's encoding does (`omitempty`):
/// removing the last annotation leaves no `annotations` field.
pub(super) fn drop_empty(meta: &mut Map<String, Value>) {
    for field in [
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "managedFields",
    ] {
        let empty = match meta.get(field) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            meta.remove(field);
        }
    }
}

/// Checks `kind`/`apiVersion` of a body against the resource, filling them in when absent.
pub(super) fn check_type(rt: &ResourceType, body: &mut Value) -> Result<(), ApiError> {
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let api_version = rt.api_version();
    for (field, want) in [("kind", rt.kind), ("apiVersion", api_version.as_str())] {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => {
                obj.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({got}) does not match the resource ({want}, {})",
                    rt.plural
                )))
            }
        }
    }
    Ok(())
}

/// A namespaced object gets the URL's namespace; a body naming another is a 400. A
/// cluster-scoped object has none.
pub(super) fn check_namespace(
    rt: &ResourceType,
    meta: &mut Map<String, Value>,
    ns: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
        Some(n) if n == ns => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Names: non-empty, at most 253 characters, no `/` or `%`, not `.` or `..`.
pub(super) fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.contains(['/', '%'])
        && name != "."
        && name != "..";
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value",
            rt.kind
        ),
    ))
}

/// A random version-4 UUID.
pub(super) fn random_uuid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five characters for `generateName`, from the same alphabet as the real server's.
pub(super) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(5)
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `len` random bytes (from the kernel; a time-seeded fallback if that fails).
fn random_bytes(len: usize) -> Vec<u8> {
    crate::lab::state::random_bytes(len).unwrap_or_else(|_| {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (0..len)
            .map(|i| (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151))
            .collect()
    })
}

/// Now as RFC 3339 in UTC with seconds (`2026-11-21T11:32:49Z`), as `creationTimestamp` is.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
