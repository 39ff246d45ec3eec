//! Authenticating CA callers from their `authorization: Bearer <token>` header.
//!
//! - **Kubernetes** (`--kube`): the token is a projected ServiceAccount token, checked with the
//!   TokenReview API for the configured audiences (default `istio-ca`). The caller's account
//!   comes from `status.user.username`; a token bound to a pod carries the pod's name and UID
//!   in `status.user.extra`, and the pod (fetched, UID compared) gives the caller's node.
//! - **Node-token file** (`--node-tokens`, the lab and file mode): a JSON object mapping each
//!   token to `{"node", "service_account": "ns/name", "pod"?, "expires_at"?}` (Unix seconds),
//!   written by whoever provisions the nodes. It is re-read when it changes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::policy::{Account, Caller, Denied};

/// `status.user.extra` key of the pod a ServiceAccount token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key of that pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// One entry of the node-token file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToken {
    /// The node the holder runs on.
    pub node: String,
    /// The holder's ServiceAccount, `namespace/name`.
    pub service_account: String,
    /// The holder's pod, `namespace/name` (for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// When the token stops being accepted (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// The node-token file format: token → entry.
pub type NodeTokens = HashMap<String, NodeToken>;

/// Checks bearer tokens.
pub enum Authenticator {
    /// TokenReview against the Kubernetes API.
    Kube {
        /// API client (the CA service's own ServiceAccount: tokenreviews create, pods get).
        client: kube::Client,
        /// Audiences a token must be valid for (any of them).
        audiences: Vec<String>,
    },
    /// The node-token file.
    File(TokenFile),
}

impl Authenticator {
    /// Who holds `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Denied> {
        match self {
            Authenticator::Kube { client, audiences } => review(client, audiences, token).await,
            Authenticator::File(file) => file.lookup(token, SystemTime::now()),
        }
    }
}

/// The bearer token of an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, Denied> {
    let value = header.ok_or_else(|| {
        Denied::Unauthenticated("no authorization header (expected Bearer <token>)".into())
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Denied::Unauthenticated(
            "authorization header is not \"Bearer <token>\"".into(),
        )),
    }
}

async fn review(
    client: &kube::Client,
    audiences: &[String],
    token: &str,
) -> Result<Caller, Denied> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(audiences.to_vec()),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| Denied::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(Denied::Unauthenticated(format!(
            "token rejected by TokenReview: {}",
            status.error.as_deref().unwrap_or("not authenticated")
        )));
    }
    // The API echoes the requested audiences the token is valid for; none means none.
    let valid_for = status.audiences.unwrap_or_default();
    if !valid_for.iter().any(|a| audiences.contains(a)) {
        return Err(Denied::Unauthenticated(format!(
            "token is not valid for audience {audiences:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let account = Account::from_username(&username).ok_or_else(|| {
        Denied::PermissionDenied(format!("caller {username:?} is not a ServiceAccount"))
    })?;
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (first(EXTRA_POD_NAME), first(EXTRA_POD_UID)) else {
        return Ok(Caller {
            account,
            node: None,
            pod: None,
        });
    };
    let pod = Api::<Pod>::namespaced(client.clone(), &account.namespace)
        .get_opt(&pod_name)
        .await
        .map_err(|e| Denied::Unavailable(format!("reading the caller's pod {pod_name}: {e}")))?
        .filter(|p| p.metadata.uid.as_deref() == Some(pod_uid.as_str()))
        .ok_or_else(|| {
            Denied::Unauthenticated(format!(
                "the token's pod {}/{pod_name} (uid {pod_uid}) no longer exists",
                account.namespace
            ))
        })?;
    let node = pod.spec.and_then(|s| s.node_name).ok_or_else(|| {
        Denied::PermissionDenied(format!(
            "the caller's pod {}/{pod_name} is not scheduled on a node",
            account.namespace
        ))
    })?;
    Ok(Caller {
        pod: Some(format!("{}/{pod_name}", account.namespace)),
        account,
        node: Some(node),
    })
}

/// What identifies a version of a file: inode, size, mtime (s, ns).
type FileStamp = (u64, u64, i64, i64);

/// The node-token file, re-read when its inode, size or mtime changes.
pub struct TokenFile {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, Arc<NodeTokens>)>>,
}

impl TokenFile {
    /// Reads `path` once now, so a missing or malformed file fails at start-up.
    pub fn open(path: PathBuf) -> Result<TokenFile, String> {
        let file = TokenFile {
            path,
            cache: Mutex::new(None),
        };
        file.tokens()?;
        Ok(file)
    }

    fn tokens(&self) -> Result<Arc<NodeTokens>, String> {
        let what =
            |e: &dyn std::fmt::Display| format!("node-token file {}: {e}", self.path.display());
        let meta = std::fs::metadata(&self.path).map_err(|e| what(&e))?;
        let key = (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, tokens)) = cache.as_ref() {
            if *k == key {
                return Ok(tokens.clone());
            }
        }
        let text = std::fs::read(&self.path).map_err(|e| what(&e))?;
        let tokens: NodeTokens = serde_json::from_slice(&text).map_err(|e| {
            what(&format!(
                "{e} (expected {{\"<token>\": {{\"node\", \"service_account\": \"ns/name\"}}}})"
            ))
        })?;
        let tokens = Arc::new(tokens);
        *cache = Some((key, tokens.clone()));
        Ok(tokens)
    }

    /// The caller holding `token` at time `now`.
    pub fn lookup(&self, token: &str, now: SystemTime) -> Result<Caller, Denied> {
        let tokens = self.tokens().map_err(Denied::Unavailable)?;
        let entry = tokens
            .get(token)
            .ok_or_else(|| Denied::Unauthenticated("unknown token".into()))?;
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if entry.expires_at.is_some_and(|at| at <= now_secs) {
            return Err(Denied::Unauthenticated(format!(
                "token of {} on {} expired",
                entry.service_account, entry.node
            )));
        }
        let account = Account::parse(&entry.service_account)
            .map_err(|e| Denied::Unavailable(format!("node-token file: {e}")))?;
        Ok(Caller {
            account,
            node: Some(entry.node.clone()),
            pod: entry.pod.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer abc\n")).unwrap(), "abc");
        for bad in [None, Some("abc"), Some("Basic abc"), Some("Bearer  ")] {
            assert!(
                matches!(bearer(bad), Err(Denied::Unauthenticated(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn token_file_lookup_expiry_and_reload() {
        let dir = std::env::temp_dir().join(format!("ambit-ca-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.json");
        let write = |json: &str| {
            let tmp = dir.join("tmp");
            std::fs::write(&tmp, json).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(
            r#"{"t1": {"node": "n1", "service_account": "istio-system/ambit", "expires_at": 1000}}"#,
        );
        let file = TokenFile::open(path.clone()).unwrap();
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let c = file.lookup("t1", at(999)).unwrap();
        assert_eq!(c.node.as_deref(), Some("n1"));
        assert_eq!(c.account.to_string(), "istio-system/ambit");
        assert!(matches!(
            file.lookup("t1", at(1000)),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            file.lookup("nope", at(1)),
            Err(Denied::Unauthenticated(_))
        ));

        write(r#"{"t2": {"node": "n2", "service_account": "shop/cart", "pod": "shop/cart-0"}}"#);
        assert!(
            file.lookup("t1", at(1)).is_err(),
            "old token gone after rewrite"
        );
        assert_eq!(
            file.lookup("t2", at(1)).unwrap().pod.as_deref(),
            Some("shop/cart-0")
        );

        write("not json");
        let err = file.lookup("t2", at(1)).unwrap_err();
        assert!(matches!(err, Denied::Unavailable(_)), "{err}");
        assert!(TokenFile::open(dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
