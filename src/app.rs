//! `ambit run`: wires the workload source, the reconciler, the pod proxies and the HTTP
//! endpoints together on two runtimes.
//!
//! The data runtime (multi-threaded) carries connections. The control runtime (the main
//! thread) runs the workload source, the reconciler and the admin/metrics/readiness servers, so
//! neither a slow scrape nor a slow `iptables-restore` stalls traffic. The endpoints' routes
//! are in [`routes`], the admin `/config_dump` in [`dump`].

mod dump;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::admin;
use crate::config::{RunConfig, Source};
use crate::drain::DrainTrigger;
use crate::explain::Explainer;
use crate::flows::FlowTable;
use crate::identity::manager::CertManager;
use crate::k8s::status::{CaptureObserver, KubeReporter, LogOnly};
use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::policy::PolicySnapshot;
use crate::proxy::{LiveConns, ProxyContext};
use crate::reconcile::{policy_config, Reconciler, StatusBoard};
use crate::workload::{file, Directory};

/// Runs the daemon until SIGTERM or SIGINT.
/// `log` is the installed log's control, for `/logging` and the drop counter.
pub fn run(config: RunConfig, log: Arc<LogControl>) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.admin_addr.ip().is_loopback(),
        "admin address {} must be a loopback address (the admin endpoint is never exposed)",
        config.admin_addr
    );
    check_privileges()?;
    let data = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.data_threads.max(1))
        .thread_name("ambit-data")
        .enable_all()
        .build()
        .context("starting the data runtime")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let data_handle = data.handle().clone();
    control.block_on(serve(config, data_handle, log))?;
    // Connections in flight are cut here; the rules stay in place so pods stay fail-closed
    // until the next daemon adopts them.
    data.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn serve(
    config: RunConfig,
    data: tokio::runtime::Handle,
    log: Arc<LogControl>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let flows = Arc::new(FlowTable::default());
    let (trigger, drain) = crate::drain::channel();
    let board = Arc::new(StatusBoard::default());
    let (directory_tx, directory_rx) = watch::channel(Arc::new(Directory::default()));
    flows.set_resolver(crate::flows::access::Resolver {
        directory: directory_rx.clone(),
        trust_domain: config.reconcile.trust_domain.clone(),
    });
    // No pod is captured before the reconciler publishes the first real policy.
    let no_policy = PolicySnapshot::empty(&policy_config(&config.reconcile));
    let (policy_tx, policy_rx) = watch::channel(Arc::new(no_policy));
    let live = Arc::new(LiveConns::default());
    tokio::spawn(live.clone().follow(policy_rx.clone()));
    let revocation = crate::identity::revocation::start_for(
        config.ca_crl.as_ref(),
        &config.ca.root_file(),
        &metrics,
    )?;
    let certs = Arc::new(
        CertManager::new(config.ca.issuer()?)
            .with_validity(config.cert_validity)
            .with_tls_policy(config.tls_policy)
            .with_revocation(revocation),
    );
    tokio::spawn(certs.clone().run_rotation());
    let ctx = ProxyContext {
        trust_domain: config.reconcile.trust_domain.clone(),
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

    let state = Arc::new(routes::State {
        board: board.clone(),
        flows: flows.clone(),
        metrics,
        config: config.clone(),
        log,
        certs: certs.clone(),
        directory: directory_rx.clone(),
        explainer: Explainer {
            node: config.reconcile.node.clone(),
            trust_domain: config.reconcile.trust_domain.clone(),
            board: board.clone(),
            directory: directory_rx.clone(),
            policy: ctx.policy.clone(),
            flows: flows.clone(),
        },
    });
    let metrics_router = routes::metrics(state.clone());
    let readiness_router = routes::readiness(state.clone());
    let admin_router = routes::admin(state);
    admin::serve(config.metrics_addr, "metrics", metrics_router).await?;
    admin::serve(config.readiness_addr, "readiness", readiness_router).await?;
    admin::serve(config.admin_addr, "admin", admin_router).await?;

    let (source, observer): (_, Arc<dyn CaptureObserver>) = match &config.source {
        Source::File(path) => (
            file::watch_file(path.clone(), config.poll_interval),
            Arc::new(LogOnly),
        ),
        Source::Kube { kubeconfig } => {
            let client = crate::k8s::client(kubeconfig.as_deref()).await?;
            let node = &config.reconcile.node;
            (
                crate::k8s::source::watch_cluster(client.clone(), node),
                Arc::new(KubeReporter::start(client, node)),
            )
        }
    };
    let reconciler = Reconciler::new(config.reconcile.clone(), ctx, data, board, certs, observer);
    tracing::info!(node = %config.reconcile.node, source = %config.source,
        backend = %config.reconcile.backend, "ambit running");
    // Kept (not polled) through the drain, so the pods' proxies stay until the end.
    let run = reconciler.run(source, directory_tx, policy_tx);
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => {}
        r = crate::signal::shutdown_signal() => r?,
    }
    drain_then_stop(&trigger, &flows, config.drain).await;
    Ok(())
}

/// SIGTERM's graceful phase: listeners close (a successor daemon's take over), HBONE peers get
/// GOAWAY, and live connections run on until none is left or `deadline` passes; whatever is
/// still open then is cut when the data runtime stops. The rules stay, so pods stay captured
/// (fail closed) until the next daemon adopts them.
pub(crate) async fn drain_then_stop(trigger: &DrainTrigger, flows: &FlowTable, deadline: Duration) {
    tracing::info!(
        live = flows.live_count(),
        ?deadline,
        "draining: listeners closed, GOAWAY to HBONE peers"
    );
    trigger.start();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while flows.live_count() > 0 && started.elapsed() < deadline {
        tick.tick().await;
    }
    match flows.live_count() {
        0 => tracing::info!(after = ?started.elapsed(), "drained; shutting down"),
        n => tracing::warn!(
            cut = n,
            "drain deadline passed; cutting the remaining connections"
        ),
    }
}

/// Fails early, with the capability named, if the daemon cannot do its job.
fn check_privileges() -> anyhow::Result<()> {
    let own = crate::netns::NetNs::current().context("opening the daemon's own netns")?;
    own.run(|| ())
        .context("setns into a network namespace failed (needs CAP_SYS_ADMIN)")?;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("creating a test socket")?;
    s.set_mark(crate::config::MARK)
        .context("setting SO_MARK failed (needs CAP_NET_ADMIN)")?;
    Ok(())
}
