//! `POST /apis/authentication.k8s.io/v1/tokenreviews` for the stand-in: the lab mints
//! ServiceAccount tokens (opaque random strings, bound to a pod like projected tokens) into a
//! registry file next to the stand-in's state file, and the stand-in reviews them with the
//! real wire shape — `status.authenticated`, `status.user.username`
//! (`system:serviceaccount:<ns>:<sa>`), `status.user.extra` with the bound pod's name and UID
//! (and node, as Kubernetes >= 1.30 adds), `status.audiences` — so the CA service's production
//! TokenReview code runs against it unchanged.
//!
//! The registry is re-read per review (the lab appends tokens while the stand-in runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Registry file name, in the same directory as the stand-in's state file.
pub const TOKENS_FILE: &str = "apiserver-tokens.json";

/// What the stand-in knows about one token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabToken {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Audiences the token is valid for.
    pub audiences: Vec<String>,
    /// Name of the pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// UID of that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Node of that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Expiry (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Token → what it stands for.
pub type LabTokens = BTreeMap<String, LabToken>;

/// Answers a TokenReview `body` (201 with the review, or 400 for a request that is not one),
/// looking tokens up in `registry` at time `now`.
pub(crate) fn review(registry: Option<&Path>, body: &[u8], now: SystemTime) -> (u16, Value) {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return (
                400,
                bad_request(format!("TokenReview body is not JSON: {e}")),
            )
        }
    };
    let spec = request.get("spec").cloned().unwrap_or(Value::Null);
    let Some(token) = spec.get("token").and_then(Value::as_str) else {
        return (
            400,
            bad_request("TokenReview spec.token is required".into()),
        );
    };
    let wanted: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let tokens: LabTokens = registry
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let status = match tokens.get(token) {
        None => failed("invalid bearer token"),
        Some(t) => {
            let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            // As the real server: no audiences requested means the API server's own.
            let matched: Vec<&String> = t
                .audiences
                .iter()
                .filter(|a| wanted.is_empty() || wanted.contains(a))
                .collect();
            if t.expires_at.is_some_and(|at| at <= now_secs) {
                failed("invalid bearer token, service account token has expired")
            } else if matched.is_empty() {
                failed("invalid bearer token, token audiences are invalid for the target audiences")
            } else {
                authenticated(t, &matched)
            }
        }
    };
    let mut out = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    // The token is not echoed back.
    if let Some(s) = out.get_mut("spec").and_then(Value::as_object_mut) {
        s.remove("token");
    }
    (201, out)
}

fn failed(error: &str) -> Value {
    json!({"user": {}, "error": error})
}

fn authenticated(t: &LabToken, audiences: &[&String]) -> Value {
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            extra.insert(format!("authentication.kubernetes.io/{k}"), json!([v]));
        }
    };
    put("pod-name", &t.pod_name);
    put("pod-uid", &t.pod_uid);
    put("node-name", &t.node_name);
    json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
            "uid": format!("sa-uid-{}-{}", t.namespace, t.service_account),
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{}", t.namespace),
                "system:authenticated",
            ],
            "extra": extra,
        },
        "audiences": audiences,
    })
}

fn bad_request(message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "BadRequest",
        "code": 400,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reviews_in_the_real_shape() {
        let dir = std::env::temp_dir().join(format!("ambit-tr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(TOKENS_FILE);
        let tokens: LabTokens = [(
            "tok".to_string(),
            LabToken {
                namespace: "istio-system".into(),
                service_account: "ambit".into(),
                audiences: vec!["istio-ca".into()],
                pod_name: Some("ambit-n1".into()),
                pod_uid: Some("u1".into()),
                node_name: Some("n1".into()),
                expires_at: Some(1000),
            },
        )]
        .into();
        std::fs::write(&path, serde_json::to_vec(&tokens).unwrap()).unwrap();
        let body = |token: &str, aud: &str| {
            serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview", "spec": {"token": token, "audiences": [aud]}}))
            .unwrap()
        };
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let (code, ok) = review(Some(&path), &body("tok", "istio-ca"), at(10));
        assert_eq!(code, 201);
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(
            ok["status"]["user"]["username"],
            "system:serviceaccount:istio-system:ambit"
        );
        assert_eq!(
            ok["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
            "u1"
        );
        assert_eq!(ok["status"]["audiences"], json!(["istio-ca"]));
        assert!(ok["spec"].get("token").is_none());
        // Typed parse, as the CA service's client does.
        let typed: k8s_openapi::api::authentication::v1::TokenReview =
            serde_json::from_value(ok).unwrap();
        assert_eq!(typed.status.unwrap().authenticated, Some(true));

        for (token, aud, time, why) in [
            ("tok", "other", 10, "audiences"),
            ("tok", "istio-ca", 1000, "expired"),
            ("forged", "istio-ca", 10, "invalid bearer token"),
        ] {
            let (code, r) = review(Some(&path), &body(token, aud), at(time));
            assert_eq!(code, 201);
            assert!(r["status"].get("authenticated").is_none(), "{r}");
            assert!(r["status"]["error"].as_str().unwrap().contains(why), "{r}");
        }
        assert_eq!(review(Some(&path), b"nope", at(1)).0, 400);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
