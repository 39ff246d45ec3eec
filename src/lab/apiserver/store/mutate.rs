//! The store's writes: create (POST), replace (PUT), patch (PATCH) and delete, each with the
//! checks a real API server makes first (type, name, namespace, preconditions).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::super::{ResourceType, RESOURCES};
use super::object::{
    check_namespace, check_type, drop_empty, metadata_mut, now_rfc3339, random_suffix, random_uuid,
    validate_name,
};
use super::patch::{json_patch, merge_patch, strip_nulls, Patch};
use super::{meta_str, ApiError, ChangeKind, Key, Store};

impl Store {
    /// Creates `body` as `res` in `ns` (`""` for cluster-scoped).
    pub fn create(
        &mut self,
        res: usize,
        ns: &str,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        check_type(rt, &mut body)?;
        let meta = metadata_mut(&mut body)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            rt.kind
                        ),
                    ))
                }
            },
        };
        validate_name(rt, &name)?;
        check_namespace(rt, meta, ns)?;
        let key = (res, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        meta.insert("name".into(), json!(name));
        // Differs from a real API server: a client-provided uid is kept (the lab assigns pod
        // UIDs and needs them to stay what it assigned).
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), json!(random_uuid()));
        }
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        drop_empty(meta);
        if rt.kind == "Namespace" && rt.group.is_empty() {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if body.get("status").and_then(|s| s.get("phase")).is_none() {
                body["status"] = json!({"phase": "Active"});
            }
        }
        Ok(self.commit(key, ChangeKind::Added, body, None))
    }

    /// Replaces the object named `name` with `body` (PUT).
    pub fn replace(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        check_type(rt, &mut body)?;
        let key = (res, ns.to_string(), name.to_string());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let meta = metadata_mut(&mut body)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            None | Some("") => {
                meta.insert("name".into(), json!(name));
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({other}) does not match the name on the URL ({name})"
                )))
            }
        }
        check_namespace(rt, meta, ns)?;
        self.check_preconditions(rt, name, &old, meta)?;
        self.update(key, old, body)
    }

    /// Applies a patch to the object (PATCH). With `create_missing` (server-side apply), a
    /// missing object is created from the patch.
    pub fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        patch: &Patch,
        create_missing: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let key = (res, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            if create_missing {
                let Patch::Merge(body) = patch else {
                    return Err(ApiError::not_found(rt, name));
                };
                let mut body = body.clone();
                strip_nulls(&mut body);
                let meta = metadata_mut(&mut body)?;
                meta.insert("name".into(), json!(name));
                return self.create(res, ns, body);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let mut body = (*old).clone();
        match patch {
            Patch::Merge(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut body, p);
            }
            Patch::Json(ops) => json_patch(&mut body, ops)?,
        }
        check_type(rt, &mut body)?;
        let meta = metadata_mut(&mut body)?;
        if meta.get("name").and_then(Value::as_str) != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        check_namespace(rt, meta, ns)?;
        // A resourceVersion in the patch is a precondition, as on a real server.
        self.check_preconditions(rt, name, &old, meta)?;
        self.update(key, old, body)
    }

    /// Deletes the object; `preconditions` from DeleteOptions (`uid`, `resourceVersion`).
    pub fn delete(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        preconditions: Option<&Value>,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let key = (res, ns.to_string(), name.to_string());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(pre) = preconditions {
            if let Some(uid) = pre.get("uid").and_then(Value::as_str) {
                if meta_str(&old, "uid") != Some(uid) {
                    return Err(ApiError::conflict(
                        rt,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            meta_str(&old, "uid").unwrap_or_default()
                        ),
                    ));
                }
            }
            if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str) {
                if meta_str(&old, "resourceVersion") != Some(rv) {
                    return Err(ApiError::conflict(
                        rt,
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            meta_str(&old, "resourceVersion").unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let body = (*old).clone();
        Ok(self.commit(key, ChangeKind::Deleted, body, Some(old)))
    }

    /// `412`-like checks shared by PUT and PATCH: uid and resourceVersion in the new body.
    fn check_preconditions(
        &self,
        rt: &ResourceType,
        name: &str,
        old: &Value,
        meta: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str) {
            if !rv.is_empty() && meta_str(old, "resourceVersion") != Some(rv) {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        if let Some(uid) = meta.get("uid").and_then(Value::as_str) {
            if !uid.is_empty() && meta_str(old, "uid") != Some(uid) {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(old, "uid").unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stores `body` in place of `old`, keeping what a client cannot change. A body equal to
    /// the stored object is not a change: no new resourceVersion, no event (as on a real
    /// server).
    fn update(
        &mut self,
        key: Key,
        old: Arc<Value>,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let meta = metadata_mut(&mut body)?;
        drop_empty(meta);
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            match old.get("metadata").and_then(|m| m.get(field)) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if body == *old {
            return Ok(old);
        }
        Ok(self.commit(key, ChangeKind::Modified, body, Some(old)))
    }
}
