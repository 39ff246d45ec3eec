//! `ambit sidecar`: the same proxy, run per pod as a sidecar — the topology ambit replaces, so
//! the two can be compared on the same lab.
//!
//! The process is started inside the pod's network namespace as root, installs Istio's classic
//! sidecar rules there (`ISTIO_INBOUND` → 15006, the owner-based `ISTIO_OUTPUT` → 15001), opens
//! its listeners and gets its certificate, and then drops to the proxy user (UID/GID 1337, which the
//! rules let through) for the rest of its life. It speaks HBONE to other sidecars and to
//! ambient pods, so both topologies do the same cryptographic work.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::StatusCode;
use tokio::sync::watch;

use crate::admin::{self, Reply, Router};
use crate::capture::CaptureOptions;
use crate::config::SidecarConfig;
use crate::flows::FlowTable;
use crate::identity::manager::CertManager;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::policy::{PolicyConfig, PolicySnapshot};
use crate::proxy::{LiveConns, PodProxy, PodSecurity, ProxyContext};
use crate::rules::{self, Families};
use crate::socket::Placement;
use crate::workload::enroll::DaemonIdentity;
use crate::workload::{file, Directory};

/// Runs the sidecar until SIGTERM/SIGINT.
pub fn run(config: SidecarConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .thread_name("ambit-sidecar")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: SidecarConfig) -> anyhow::Result<()> {
    let (namespace, name) = config
        .pod
        .split_once('/')
        .with_context(|| format!("--pod {:?}: expected namespace/name", config.pod))?;
    let snapshot = file::load(&config.workloads)?;
    let Some(pod) = snapshot
        .pods
        .iter()
        .find(|p| p.namespace == namespace && p.name == name)
        .cloned()
    else {
        bail!(
            "pod {} is not in {}",
            config.pod,
            config.workloads.display()
        );
    };
    let options = CaptureOptions::from_annotations(&pod.annotations)
        .with_context(|| format!("pod {}", config.pod))?;
    // The certificate first: once the rules are in, root's own connections (this one to the
    // CA) would be captured; later renewals run as the proxy user, which the rules let out.
    let identity = Identity::new(&config.trust_domain, &pod.namespace, &pod.service_account)?;
    let metrics = Arc::new(Metrics::default());
    let revocation = crate::identity::revocation::start_for(
        config.ca_crl.as_ref(),
        &config.ca.root_file(),
        &metrics,
    )?;
    let certs = Arc::new(
        CertManager::new(config.ca.issuer()?)
            .with_tls_policy(config.tls_policy)
            .with_revocation(revocation),
    );
    certs.set_allowed([identity.clone()].into());
    certs.ensure(&identity).await?;
    tokio::spawn(certs.clone().run_rotation());
    let here = NetNs::current()?;
    let outcome = rules::sidecar::apply_sidecar(
        &here,
        config.backend,
        &options,
        Families::BOTH,
        config.uid,
        config.gid,
    )
    .with_context(|| format!("installing the sidecar rules for {}", config.pod))?;
    tracing::info!(pod = %config.pod, ?outcome, "sidecar rules in place");

    let flows = Arc::new(FlowTable::default());
    let (trigger, drain) = crate::drain::channel();
    let daemon = DaemonIdentity::default();
    let (directory_tx, directory_rx) = watch::channel(Arc::new(Directory::new(&snapshot, &daemon)));
    flows.set_resolver(crate::flows::access::Resolver {
        directory: directory_rx.clone(),
        trust_domain: config.trust_domain.clone(),
    });
    // The sidecar enforces the workload file's policies for its pod, with Istio's defaults.
    let policy_config = PolicyConfig {
        node: Some(pod.node.clone()),
        ..PolicyConfig::default()
    };
    let policy = |s: &crate::workload::Snapshot| Arc::new(PolicySnapshot::build(s, &policy_config));
    let (policy_tx, policy_rx) = watch::channel(policy(&snapshot));
    let live = Arc::new(LiveConns::default());
    tokio::spawn(live.clone().follow(policy_rx.clone()));
    let ctx = ProxyContext {
        trust_domain: config.trust_domain.clone(),
        endpoint_turn: Arc::default(),
        directory: directory_rx.clone(),
        flows: flows.clone(),
        metrics: metrics.clone(),
        handshakes: Arc::default(),
        drain: drain.clone(),
        policy: policy_rx,
        live,
        tcp_copy: config.tcp_copy,
        hbone_early_data: config.hbone_early_data,
        cluster_id: config.cluster_id.clone(),
    };
    let security = PodSecurity::new(
        identity,
        &certs,
        Placement::Sidecar,
        Duration::from_secs(60),
        metrics.dial_counters(),
    );
    let _proxy = PodProxy::start(
        ctx,
        Arc::new(pod),
        Placement::Sidecar,
        security,
        &tokio::runtime::Handle::current(),
    )?;
    let readiness: Router = admin::read_only(|path| match path {
        "/healthz/ready" => Reply::text(StatusCode::OK, "ready\n"),
        _ => Reply::text(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    });
    let (f, m) = (flows.clone(), metrics.clone());
    let admin: Router = admin::read_only(move |path| match path {
        "/flows" => Reply::json(&f.snapshot()),
        "/metrics" => Reply::text(StatusCode::OK, m.encode()),
        _ => Reply::text(
            StatusCode::NOT_FOUND,
            "ambit sidecar admin: /flows /metrics\n",
        ),
    });
    admin::serve(config.admin_addr, "admin", admin).await?;
    admin::serve(config.readiness_addr, "readiness", readiness).await?;

    drop_privileges(config.uid, config.gid)?;
    tracing::info!(pod = %config.pod, uid = config.uid, "sidecar running");

    let mut source = file::watch_file(config.workloads.clone(), config.poll_interval);
    let follow = async {
        while source.changed().await.is_ok() {
            let state = source.borrow_and_update().clone();
            if state.synced {
                directory_tx.send_replace(Arc::new(Directory::new(&state.snapshot, &daemon)));
                policy_tx.send_replace(policy(&state.snapshot));
            }
        }
    };
    tokio::select! {
        _ = follow => {}
        r = crate::signal::shutdown_signal() => r?,
    }
    let deadline = std::time::Duration::from_secs(crate::config::DEFAULT_DRAIN_SECS);
    crate::app::drain_then_stop(&trigger, &flows, deadline).await;
    Ok(())
}

/// Becomes the proxy user: no capabilities from here on, and the rules' owner match lets this
/// process's own connections out uncaptured.
fn drop_privileges(uid: u32, gid: u32) -> anyhow::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let gid = Gid::from_raw(gid);
    setgroups(&[gid]).context("setgroups")?;
    setgid(gid).context("setgid to the proxy group")?;
    setuid(Uid::from_raw(uid)).context("setuid to the proxy user")?;
    Ok(())
}
