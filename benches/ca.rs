//! How many certificates per second the CA service signs: `ambit ca serve` (file mode) on
//! loopback, driven by CA clients exactly as node daemons use them (fresh P-256 key + CSR per
//! request, TLS + gRPC, token, impersonation), with the in-process signing rate beside it.
//!
//!   cargo bench --bench ca [-- REQUESTS CLIENTS]      (default 2000 requests, 4 clients)
//!
//! Each client keeps up to `MAX_CONCURRENT_ISSUES` requests in flight, as a node daemon does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit::ca::auth::{NodeToken, NodeTokens};
use ambit::ca::client::{CaClient, CaClientConfig};
use ambit::ca::policy::Account;
use ambit::ca::serve::{start, AuthMode, ServeConfig};
use ambit::identity::csr::{new_request, CheckedCsr};
use ambit::identity::issuer::Issuer;
use ambit::identity::manager::MAX_CONCURRENT_ISSUES;
use ambit::identity::{ca, Identity};
use ambit::workload::{Pod, Snapshot};
use futures_util::stream::{self, StreamExt};

const PODS: usize = 50;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let requests: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("ambit-ca-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, requests, clients);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, requests: usize, clients: usize) -> anyhow::Result<()> {
    let ca = ca::init(&dir.join("ca"))?;
    let ids: Vec<Identity> = (0..PODS)
        .map(|i| Identity::new("cluster.local", "bench", format!("sa{i}")))
        .collect::<Result<_, _>>()?;

    // In-process reference: CSR parse + check + sign, one core.
    let csrs: Vec<(Identity, String)> = ids
        .iter()
        .map(|id| Ok((id.clone(), new_request(id).map_err(anyhow::Error::msg)?.1)))
        .collect::<anyhow::Result<_>>()?;
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        let (id, pem) = &csrs[i % csrs.len()];
        let csr = CheckedCsr::parse(pem)?;
        ca.sign_csr(&csr, id, Duration::from_secs(3600), SystemTime::now())?;
    }
    let in_process = n as f64 / t.elapsed().as_secs_f64();

    let tokens: NodeTokens = [(
        "bench-token".to_string(),
        NodeToken {
            node: "n1".into(),
            service_account: "istio-system/ambit".into(),
            pod: None,
            expires_at: None,
        },
    )]
    .into();
    std::fs::write(dir.join("tokens.json"), serde_json::to_vec(&tokens)?)?;
    std::fs::write(dir.join("n1.token"), "bench-token")?;
    let snapshot = Snapshot {
        pods: ids
            .iter()
            .enumerate()
            .map(|(i, id)| Pod {
                uid: format!("u{i}"),
                name: format!("p{i}"),
                namespace: "bench".into(),
                service_account: id.service_account().into(),
                node: "n1".into(),
                ..Pod::default()
            })
            .collect(),
        ..Snapshot::default()
    };
    std::fs::write(dir.join("workloads.json"), serde_json::to_vec(&snapshot)?)?;

    // The service on its own 2-thread runtime (its default), the clients on another.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let running = server_rt.block_on(start(ServeConfig {
        ca_dir: dir.join("ca"),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        metrics: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        trust_domain: "cluster.local".into(),
        max_validity: Duration::from_secs(24 * 3600),
        trusted_node_accounts: vec![
            Account::parse("istio-system/ambit").map_err(anyhow::Error::msg)?
        ],
        server_names: vec!["ambit-ca.bench".into()],
        server_ips: vec![],
        auth: AuthMode::Files {
            node_tokens: dir.join("tokens.json"),
            workloads: dir.join("workloads.json"),
        },
        poll_interval: Duration::from_millis(50),
        threads: 2,
        publish_crl: None,
        publish_crl_configmap: None,
    }))?;
    let addr = running.addr;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (elapsed, mut latencies) = client_rt.block_on(async {
        let make = || {
            CaClient::new(CaClientConfig {
                address: format!("localhost:{}", addr.port()),
                root: dir.join("ca").join(ca::ROOT_CERT),
                token: dir.join("n1.token"),
                server_name: Some("ambit-ca.bench".into()),
                cluster_id: "Kubernetes".into(),
                impersonate: true,
            })
        };
        let clients: Vec<Arc<CaClient>> = (0..clients)
            .map(|_| make().map(Arc::new))
            .collect::<Result<_, _>>()?;
        // Warm up: connections open, workload file read.
        for c in &clients {
            let mut tries = 0;
            while c.issue(&ids[0], Duration::from_secs(3600)).await.is_err() {
                tries += 1;
                anyhow::ensure!(tries < 100, "the CA service never answered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let started = Instant::now();
        let latencies: Vec<Duration> = stream::iter(0..requests)
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                let id = ids[i % ids.len()].clone();
                async move {
                    let t = Instant::now();
                    client.issue(&id, Duration::from_secs(3600)).await?;
                    Ok::<_, anyhow::Error>(t.elapsed())
                }
            })
            .buffer_unordered(MAX_CONCURRENT_ISSUES * clients.len())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok::<_, anyhow::Error>((started.elapsed(), latencies))
    })?;
    server_rt.block_on(running.stop())?;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!("in-process sign_csr (parse + check + sign, 1 thread): {in_process:.0} certs/s");
    println!(
        "CA service, {requests} requests, {clients} clients x {MAX_CONCURRENT_ISSUES} in flight: \
         {:.0} certs/s; latency p50 {:.2} ms, p99 {:.2} ms (client key + CSR included)",
        requests as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}
