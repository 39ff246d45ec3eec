// ---------------------------------------------------------------------------------------------
// The run.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ambit::config::HBONE_PORT;
use ambit::identity::{tls, Ca, Identity, DEFAULT_TRUST_DOMAIN};
use ambit::lab::{Lab, LabSpec, CA_DIR};
use ambit::netns::NetNs;
use ambit::workload::enroll::DATAPLANE_MODE_LABEL;
use anyhow::{anyhow, bail, Context};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::checks::{check_conn_flows, check_data_flows, flow_dst, flows, settled, wait_state};
use crate::datapath::{connection_rate, measure, one_handshake, rate_loop};
use crate::report::{render_json, render_markdown, target_dir, Machine};
use crate::results::{MemBatch, MemKind, Memory, ModeResult, RateResult, Report, Rss};
use crate::sampling::{cpu_text, hbone_dials, open_idle, read_rss};
use crate::servers::Servers;
use crate::{
    ModeSpec, Plan, BENCH_SA, CLIENT_POD, CLOSE_GRACE, DAEMON_DEADLINE, DIRECT, ECHO_PORT,
    EVICTION_WAIT, HANDSHAKE_PING_PORT, HBONE, IDLE_BATCH, MESH_POD, PASSTHROUGH, PLAIN_POD,
    PODS_PER_NODE, POOL_IDLE_SECS, RULES, SETTLE, SHARED_CONNS, SINK_PORT, STUCK_SLACK,
};

pub(crate) fn run(plan: Plan, args: &[String]) -> anyhow::Result<()> {
    raise_fd_limit();
    let machine = Machine::describe();
    let lab = Lab::up(&LabSpec {
        name: None,
        nodes: 2,
        pods_per_node: PODS_PER_NODE,
        namespace_ambient: true,
        kube: false,
    })
    .context("building the lab")?;
    eprintln!(
        "lab {} up (remove it with `ambit lab down {}` if this run is interrupted)",
        lab.name(),
        lab.name()
    );
    // Out of the mesh: n2-p2 (the passthrough destination) and n1's unused pods.
    let opted_out: Vec<String> = lab
        .pods_on("n1")
        .filter(|p| p.name != CLIENT_POD)
        .map(|p| p.name.clone())
        .chain([PLAIN_POD.to_string()])
        .collect();
    lab.update_workloads(|s| {
        for pod in s.pods.iter_mut().filter(|p| opted_out.contains(&p.name)) {
            pod.labels
                .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
        }
    })
    .context("labelling pods out of the mesh")?;
    let idle_pods: Vec<String> = lab
        .pods_on("n2")
        .filter(|p| p.name != MESH_POD && p.name != PLAIN_POD)
        .map(|p| p.name.clone())
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let servers = runtime.block_on(Servers::start(&lab, &idle_pods))?;
    let mut bench = Bench {
        plan,
        lab: &lab,
        runtime: &runtime,
        client_ns: lab.pod_netns(CLIENT_POD)?,
        servers,
        pids: vec![("bench".to_string(), std::process::id())],
    };

    let mut modes = Vec::new();
    eprintln!("direct (no daemon):");
    modes.push(bench.mode(DIRECT)?);

    let binary = crate::modes_labs::ambit_binary();
    let daemon_args = [
        format!("--rules={RULES}"),
        format!("--pool-idle-secs={POOL_IDLE_SECS}"),
    ];
    for node in ["n1", "n2"] {
        lab.start_daemon(node, &binary, &daemon_args)
            .with_context(|| format!("starting ambit on {node}"))?;
    }
    let started = Instant::now();
    let enrolled: Vec<(&str, &str)> = [("n1", CLIENT_POD), ("n2", MESH_POD)]
        .into_iter()
        .chain(idle_pods.iter().map(|p| ("n2", p.as_str())))
        .collect();
    lab.wait_ready("n1", DAEMON_DEADLINE)
        .context("waiting for ambit on n1 to be ready")?;
    lab.wait_ready("n2", DAEMON_DEADLINE)
        .context("waiting for ambit on n2 to be ready")?;
    for (node, pod) in &enrolled {
        wait_state(&lab, node, pod, true, started + DAEMON_DEADLINE)?;
    }
    wait_state(&lab, "n2", PLAIN_POD, false, started + DAEMON_DEADLINE)?;
    eprintln!(
        "ambit ({RULES}) running on n1 and n2; {} pods enrolled, {PLAIN_POD} out of the mesh, \
         after {:.1} s",
        enrolled.len(),
        started.elapsed().as_secs_f64()
    );
    let daemons: Vec<(String, u32)> = ["n1", "n2"]
        .iter()
        .map(|n| {
            lab.daemon_pid(n)
                .map(|pid| (format!("ambit {n}"), pid))
                .ok_or_else(|| anyhow!("no daemon pid for {n}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let daemon_rss_at_start = daemons
        .iter()
        .map(|(who, pid)| Ok((who.clone(), read_rss(*pid)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    bench.pids.extend(daemons.iter().cloned());

    // First, while the daemons have carried no traffic: freed memory they would reuse hides
    // growth.
    eprintln!("memory per idle connection (daemon RSS):");
    let memory = bench.memory(&idle_pods)?;
    eprintln!("passthrough ({CLIENT_POD} -> {PLAIN_POD}, out of the mesh):");
    modes.push(bench.mode(PASSTHROUGH)?);
    eprintln!("hbone ({CLIENT_POD} -> {MESH_POD}, both enrolled):");
    modes.push(bench.mode(HBONE)?);
    eprintln!("HBONE handshakes (fabric -> {MESH_POD}:{HBONE_PORT}):");
    let handshakes = bench.handshakes()?;

    drop(bench);
    runtime.shutdown_timeout(Duration::from_secs(2));

    let report = Report {
        modes,
        handshakes,
        memory,
        daemon_rss_at_start,
    };
    let markdown = render_markdown(&plan, &machine, &report);
    let json = render_json(&plan, args, &machine, &report);
    println!("\n{markdown}");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join("throughput.md");
    let json_path = dir.join("throughput.json");
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());

    lab.down().context("removing the lab")?;
    Ok(())
}

/// Raises the soft open-files limit to the hard one: the memory test holds a few hundred
/// sockets on each side in this process (the daemons inherit the limit).
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the measurements share.
struct Bench<'a> {
    plan: Plan,
    lab: &'a Lab,
    runtime: &'a Runtime,
    client_ns: NetNs,
    servers: Servers,
    /// Processes whose CPU time is sampled: this one, then the daemons once they run.
    pids: Vec<(String, u32)>,
}

impl Bench<'_> {
    /// Runs `work` on the runtime, giving up after `limit`.
    fn block_on_timeout<F: Future>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        self.runtime
            .block_on(async { tokio::time::timeout(limit, work).await })
    }

    fn addr(&self, pod: &str, port: u16) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::from((self.lab.pod(pod)?.ipv4, port)))
    }

    /// Data path, route check, connection rate, route check.
    fn mode(&self, spec: ModeSpec) -> anyhow::Result<ModeResult> {
        let plan = self.plan;
        let sink_addr = self.addr(spec.server_pod, SINK_PORT)?;
        let echo_addr = self.addr(spec.server_pod, ECHO_PORT)?;
        let ping_addr = self.addr(spec.server_pod, spec.ping_port)?;
        let sink = self.servers.sink(spec.server_pod)?;
        let (stream, rr) = self.runtime.block_on(measure(
            spec.name,
            plan,
            &self.client_ns,
            sink,
            (sink_addr, echo_addr),
            &self.pids,
        ))?;
        if let Some(route) = spec.route {
            settled(|| check_data_flows(self.lab, spec, route, &[sink_addr, echo_addr]))?;
            eprintln!("  /flows: carried on route {route:?}");
        }
        let planned = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
        let conn = self
            .block_on_timeout(
                planned,
                connection_rate(
                    plan,
                    &self.client_ns,
                    ping_addr,
                    spec.client_ports,
                    &self.pids,
                ),
            )
            .map_err(|_| anyhow!("connection-rate test did not finish within {planned:?}"))?
            .with_context(|| format!("{}: new connections to {ping_addr}", spec.name))?;
        eprintln!(
            "  new connections: {:.0}/s, p50 {:.1} µs, p99 {:.1} µs (CPU: {})",
            conn.per_second(),
            conn.p50_us,
            conn.p99_us,
            cpu_text(&conn.cpu)
        );
        let conn_flows = match spec.route {
            Some(route) => Some(settled(|| {
                check_conn_flows(self.lab, spec, route, ping_addr)
            })?),
            None => None,
        };
        Ok(ModeResult {
            spec,
            stream,
            rr,
            conn,
            conn_flows,
        })
    }

    /// Fresh HBONE handshakes from the fabric to `n2-p1:15008`, one after another.
    fn handshakes(&self) -> anyhow::Result<RateResult> {
        let plan = self.plan;
        let ca = Ca::load(&self.lab.dir().join(CA_DIR)).context("loading the lab CA")?;
        let me = Identity::new(DEFAULT_TRUST_DOMAIN, self.lab.namespace(), BENCH_SA)?;
        let cert = ca
            .issue(&me, Duration::from_secs(3600), SystemTime::now())
            .context("issuing the bench client certificate")?;
        let server = self.lab.pod(MESH_POD)?;
        let expected = Identity::new(
            DEFAULT_TRUST_DOMAIN,
            &server.namespace,
            &server.service_account,
        )?;
        let config =
            tls::client_config(&cert, ca.roots(), vec![expected], tls::TlsPolicy::Default)?;
        let fabric = self.lab.fabric_netns()?;
        let peer = SocketAddr::from((server.ipv4, HBONE_PORT));
        let target = SocketAddr::from((server.ipv4, HANDSHAKE_PING_PORT));
        let namespace = self.lab.namespace().to_string();
        let forced = AtomicU64::new(0);
        let planned = plan.conn_warmup + plan.conn_window + STUCK_SLACK;
        let work = rate_loop(plan, &self.pids, || {
            one_handshake(&fabric, peer, target, config.clone(), &namespace, &forced)
        });
        let mut result = self
            .block_on_timeout(planned, work)
            .map_err(|_| anyhow!("handshake test did not finish within {planned:?}"))?
            .with_context(|| format!("HBONE handshakes to {peer}, CONNECT {target}"))?;
        result.forced_closes = forced.load(Ordering::Relaxed);
        eprintln!(
            "  handshakes: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs (CPU: {}){}",
            result.per_second(),
            result.p50_us,
            result.p99_us,
            cpu_text(&result.cpu),
            if result.forced_closes > 0 {
                format!(
                    ", {} connections aborted after {CLOSE_GRACE:?}",
                    result.forced_closes
                )
            } else {
                String::new()
            }
        );
        let carried = flows(self.lab, "n2")?
            .iter()
            .filter(|f| f["listener"] == "hbone" && flow_dst(f) == Some(target))
            .filter(|f| f["peer_identity"] == me.to_string().as_str())
            .count();
        if carried == 0 {
            bail!("ambit on n2 recorded no hbone flow to {target} from {me}");
        }
        eprintln!("  /flows on n2: {carried} hbone flows to {target} with peer identity {me}");
        Ok(result)
    }

    /// Daemon RSS before and after opening batches of idle connections, each batch on top of
    /// the previous ones (see the module documentation).
    fn memory(&self, idle_pods: &[String]) -> anyhow::Result<Memory> {
        let pid = |node: &str| {
            self.lab
                .daemon_pid(node)
                .ok_or_else(|| anyhow!("no daemon on {node}"))
        };
        let (n1, n2) = (pid("n1")?, pid("n2")?);
        let rss = || -> anyhow::Result<[Rss; 2]> { Ok([read_rss(n1)?, read_rss(n2)?]) };
        let mesh_echo = self.addr(MESH_POD, ECHO_PORT)?;
        let mut batches: Vec<(MemKind, Vec<SocketAddr>)> = Vec::new();
        for round in 0..self.plan.mem_rounds {
            let own = idle_pods
                .iter()
                .skip(round * IDLE_BATCH)
                .take(IDLE_BATCH)
                .map(|p| self.addr(p, ECHO_PORT))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if own.len() < IDLE_BATCH {
                bail!("not enough idle pods for {} batches", self.plan.mem_rounds);
            }
            batches.push((MemKind::OwnTunnel, own));
            batches.push((MemKind::Shared, vec![mesh_echo; SHARED_CONNS]));
        }

        // Warm-up: one tunnelled connection through every code path, closed, pool evicted.
        let warm = self
            .block_on_timeout(STUCK_SLACK, open_idle(&self.client_ns, &[mesh_echo]))
            .map_err(|_| anyhow!("warm-up connection hung"))?
            .context("warm-up connection")?;
        self.runtime.block_on(async move { drop(warm) });
        std::thread::sleep(EVICTION_WAIT);

        let baseline = rss()?;
        let mut before = baseline;
        let mut open: Vec<TcpStream> = Vec::new();
        let mut done = Vec::new();
        for (i, (kind, targets)) in batches.iter().enumerate() {
            let dials_before = hbone_dials(self.lab, "n1");
            let conns = self
                .block_on_timeout(STUCK_SLACK, open_idle(&self.client_ns, targets))
                .map_err(|_| anyhow!("opening {} idle connections hung", targets.len()))?
                .with_context(|| format!("opening idle connections ({})", kind.label()))?;
            open.extend(conns);
            std::thread::sleep(SETTLE);
            let loaded = rss()?;
            let dials = hbone_dials(self.lab, "n1")
                .zip(dials_before)
                .map(|(a, b)| a.saturating_sub(b));
            let b = MemBatch {
                kind: *kind,
                batch: i + 1,
                conns: targets.len(),
                dials,
                n1: [before[0], loaded[0]],
                n2: [before[1], loaded[1]],
            };
            eprintln!(
                "  batch {}: {} idle connections ({}), {} pooled TLS connections dialled: \
                 n1 {:+} KiB ({:.1} KiB/conn), n2 {:+} KiB ({:.1} KiB/conn)",
                b.batch,
                b.conns,
                kind.label(),
                dials.map_or("?".to_string(), |d| d.to_string()),
                b.n1[1].vm_kib as i64 - b.n1[0].vm_kib as i64,
                b.kib_per_conn(&b.n1),
                b.n2[1].vm_kib as i64 - b.n2[0].vm_kib as i64,
                b.kib_per_conn(&b.n2),
            );
            done.push(b);
            before = loaded;
        }
        let peak = before;
        self.runtime.block_on(async move { drop(open) });
        std::thread::sleep(EVICTION_WAIT);
        let after_close = rss()?;
        let memory = Memory {
            batches: done,
            baseline,
            peak,
            after_close,
        };
        eprintln!(
            "  after closing all and pool eviction: n1 handed back {:.0}% of its growth, n2 {:.0}%",
            memory.returned_percent(0),
            memory.returned_percent(1)
        );
        Ok(memory)
    }
}
