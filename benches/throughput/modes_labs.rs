// ---------------------------------------------------------------------------------------------
// The labs of the modes comparison: direct + ambient (one lab), ztunnel, sidecar.

use std::path::PathBuf;
use std::time::Instant;

use ambit::lab::Lab;
use ambit::workload::enroll::DATAPLANE_MODE_LABEL;
use anyhow::{anyhow, Context};
use tokio::runtime::Runtime;

use crate::checks::wait_state;
use crate::modes::{Mesh, ModeServers, Pair, PairResult, Procs, ScalePoint, SIDECAR_STATUS, SIZES};
use crate::modes_idle::{idle_memory, IdleMemory};
use crate::modes_run::{measure_pair, mode_lab, pod_name, scale_point};
use crate::ztunnel::{self, Ztunnels};
use crate::{Plan, CLIENT_POD, DAEMON_DEADLINE, RULES};

/// Environment variable naming the ambit binary to measure (default: the one cargo built);
/// for A/B runs of two builds.
pub(crate) const AMBIT_BIN_ENV: &str = "AMBIT_BIN";

/// Which modes, pairs and parts a run measures (`--meshes`, `--pairs`, `--no-scaling`).
#[derive(Clone, Debug)]
pub(crate) struct Select {
    pub(crate) meshes: Vec<Mesh>,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) scaling: bool,
}

impl Select {
    fn wants(&self, mesh: Mesh) -> bool {
        self.meshes.contains(&mesh)
    }

    /// The selected pairs `mesh` measures (sidecars have no passthrough pair).
    fn pairs_for(&self, mesh: Mesh) -> Vec<Pair> {
        self.pairs
            .iter()
            .copied()
            .filter(|p| p.in_mesh || mesh != Mesh::Sidecar)
            .collect()
    }

    /// Pods per node of a lab: the largest size, or just what the pairs need.
    fn lab_pods(&self) -> usize {
        if self.scaling {
            SIZES[SIZES.len() - 1]
        } else {
            SIZES[0] + 1
        }
    }

    fn sizes(&self) -> &'static [usize] {
        if self.scaling {
            &SIZES
        } else {
            &SIZES[..1]
        }
    }
}

/// Everything the modes comparison measured.
#[derive(Default)]
pub(crate) struct ModesOut {
    pub(crate) pairs: Vec<PairResult>,
    pub(crate) scale: Vec<ScalePoint>,
    pub(crate) idle: Vec<IdleMemory>,
    /// Why the ztunnel mode was skipped, if it was.
    pub(crate) ztunnel_skipped: Option<String>,
}

/// The ambit binary the daemons run: `$AMBIT_BIN`, else the one cargo built.
pub(crate) fn ambit_binary() -> PathBuf {
    std::env::var_os(AMBIT_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ambit")))
}

/// Direct and ambient on one lab (ambient namespace), pods beyond the current size labelled
/// out of the mesh and enrolled size by size.
pub(crate) fn run_ambient_lab(
    rt: &Runtime,
    plan: Plan,
    sel: &Select,
    out: &mut ModesOut,
) -> anyhow::Result<()> {
    if !sel.wants(Mesh::Direct) && !sel.wants(Mesh::Ambient) {
        return Ok(());
    }
    let lab = mode_lab(true, sel.lab_pods())?;
    let first = SIZES[0];
    let label_out = |size: usize| {
        lab.update_workloads(|s| {
            for pod in s.pods.iter_mut() {
                let index: usize = pod
                    .name
                    .rsplit_once("-p")
                    .and_then(|(_, i)| i.parse().ok())
                    .unwrap_or(usize::MAX);
                if index > size {
                    pod.labels
                        .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
                } else {
                    pod.labels.remove(DATAPLANE_MODE_LABEL);
                }
            }
        })
        .context("labelling pods")
    };
    label_out(first)?;
    let servers = rt.block_on(ModeServers::start(&lab, &sel.pairs))?;
    let client = lab.pod_netns(CLIENT_POD)?;
    if sel.wants(Mesh::Direct) {
        for pair in &sel.pairs {
            eprintln!("direct {}:", pair.name);
            let procs = Procs::default();
            let r = measure_pair(
                rt,
                &lab,
                plan,
                Mesh::Direct,
                *pair,
                &client,
                &servers,
                &procs,
            )?;
            out.pairs.push(r);
        }
    }
    if sel.wants(Mesh::Ambient) {
        let binary = ambit_binary();
        for node in ["n1", "n2"] {
            lab.start_daemon(node, &binary, &[format!("--rules={RULES}")])
                .with_context(|| format!("starting ambit on {node}"))?;
        }
        for node in ["n1", "n2"] {
            lab.wait_ready(node, DAEMON_DEADLINE)?;
        }
        let pid = |n: &str| lab.daemon_pid(n).ok_or_else(|| anyhow!("no daemon on {n}"));
        let pids = vec![pid("n1")?, pid("n2")?];
        for &size in sel.sizes() {
            if size != first {
                label_out(size)?;
            }
            let deadline = Instant::now() + DAEMON_DEADLINE;
            for node in 1..=2 {
                for i in 1..=size {
                    let (n, pod) = (format!("n{node}"), pod_name(node, i));
                    wait_state(&lab, &n, &pod, true, deadline)?;
                }
            }
            if size == first {
                eprintln!("ambient (ambit run per node, {}):", binary.display());
                let procs = Procs {
                    all: pids.clone(),
                    client: vec![pids[0]],
                    server: vec![pids[1]],
                };
                out.idle
                    .push(idle_memory(rt, &lab, Mesh::Ambient, &client, &procs)?);
                for pair in sel.pairs_for(Mesh::Ambient) {
                    eprintln!("ambient {} (ambit run per node):", pair.name);
                    let server_node = lab.pod(pair.server)?.node.clone();
                    let procs = Procs {
                        all: pids.clone(),
                        client: vec![pids[0]],
                        server: match (pair.in_mesh, server_node.as_str()) {
                            (false, _) => vec![],
                            (true, "n1") => vec![pids[0]],
                            (true, _) => vec![pids[1]],
                        },
                    };
                    let r = measure_pair(
                        rt,
                        &lab,
                        plan,
                        Mesh::Ambient,
                        pair,
                        &client,
                        &servers,
                        &procs,
                    )?;
                    out.pairs.push(r);
                }
            }
            if sel.scaling {
                let p = scale_point(
                    rt,
                    &lab,
                    plan,
                    Mesh::Ambient,
                    size,
                    &client,
                    &servers,
                    &pids,
                )?;
                out.scale.push(p);
            }
        }
    }
    rt.block_on(async move { drop(servers) });
    lab.down().context("removing the lab")?;
    Ok(())
}

/// ztunnel, one per mesh pod (`n*-p1`..`n*-p<SIZES[0]>`), on its own small lab; skipped with
/// a note when the binary is absent.
pub(crate) fn run_ztunnel_lab(
    rt: &Runtime,
    plan: Plan,
    sel: &Select,
    out: &mut ModesOut,
) -> anyhow::Result<()> {
    if !sel.wants(Mesh::Ztunnel) {
        return Ok(());
    }
    let binary = match ztunnel::locate() {
        Ok(b) => b,
        Err(note) => {
            eprintln!("ztunnel mode skipped: {note}");
            out.ztunnel_skipped = Some(note);
            return Ok(());
        }
    };
    let lab = mode_lab(false, SIZES[0] + 1)?;
    let servers = rt.block_on(ModeServers::start(&lab, &sel.pairs))?;
    let client = lab.pod_netns(CLIENT_POD)?;
    let mesh: Vec<String> = (1..=2)
        .flat_map(|node| (1..=SIZES[0]).map(move |i| pod_name(node, i)))
        .collect();
    let mesh: Vec<&str> = mesh.iter().map(String::as_str).collect();
    let mut zt = Ztunnels::start(&lab, &binary, &mesh)?;
    zt.wait_ready(&lab, DAEMON_DEADLINE)?;
    eprintln!("ztunnel ({}), one per pod:", binary.display());
    let pid = |pod: &str| zt.pid(pod).into_iter().collect::<Vec<u32>>();
    let idle_procs = Procs {
        all: zt.pids(),
        client: pid(CLIENT_POD),
        server: pid(crate::MESH_POD),
    };
    out.idle
        .push(idle_memory(rt, &lab, Mesh::Ztunnel, &client, &idle_procs)?);
    for pair in sel.pairs_for(Mesh::Ztunnel) {
        eprintln!("ztunnel {}:", pair.name);
        let procs = Procs {
            all: zt.pids(),
            client: pid(CLIENT_POD),
            server: if pair.in_mesh {
                pid(pair.server)
            } else {
                vec![]
            },
        };
        let r = measure_pair(
            rt,
            &lab,
            plan,
            Mesh::Ztunnel,
            pair,
            &client,
            &servers,
            &procs,
        )?;
        out.pairs.push(r);
    }
    drop(zt);
    rt.block_on(async move { drop(servers) });
    lab.down().context("removing the lab")?;
    Ok(())
}

/// Sidecar mode on a lab whose namespace is not ambient: every pod annotated, sidecars
/// started size by size.
pub(crate) fn run_sidecar_lab(
    rt: &Runtime,
    plan: Plan,
    sel: &Select,
    out: &mut ModesOut,
) -> anyhow::Result<()> {
    if !sel.wants(Mesh::Sidecar) {
        return Ok(());
    }
    let lab: Lab = mode_lab(false, sel.lab_pods())?;
    lab.update_workloads(|s| {
        for p in &mut s.pods {
            p.annotations
                .insert(SIDECAR_STATUS.into(), r#"{"proxy":"ambit"}"#.into());
        }
    })
    .context("annotating pods")?;
    let pairs = sel.pairs_for(Mesh::Sidecar);
    let servers = rt.block_on(ModeServers::start(&lab, &pairs))?;
    let client = lab.pod_netns(CLIENT_POD)?;
    let binary = ambit_binary();
    let mut pids = Vec::new();
    let mut started = 0;
    for &size in sel.sizes() {
        let t = Instant::now();
        let new: Vec<String> = (1..=2)
            .flat_map(|node| (started + 1..=size).map(move |i| pod_name(node, i)))
            .collect();
        for pod in &new {
            pids.push(
                lab.start_sidecar(pod, &binary, &[])
                    .with_context(|| format!("starting the sidecar of {pod}"))?,
            );
        }
        for pod in &new {
            lab.wait_ready(pod, DAEMON_DEADLINE)?;
        }
        eprintln!(
            "{} sidecars started and ready in {:.1} s",
            new.len(),
            t.elapsed().as_secs_f64()
        );
        started = size;
        let pid = |pod: &str| lab.daemon_pid(pod).into_iter().collect::<Vec<u32>>();
        if size == SIZES[0] {
            let procs = Procs {
                all: pids.clone(),
                client: pid(CLIENT_POD),
                server: pid(crate::MESH_POD),
            };
            out.idle
                .push(idle_memory(rt, &lab, Mesh::Sidecar, &client, &procs)?);
            for pair in &pairs {
                eprintln!("sidecar {} (ambit sidecar per pod):", pair.name);
                let procs = Procs {
                    all: pids.clone(),
                    client: pid(CLIENT_POD),
                    server: pid(pair.server),
                };
                let r = measure_pair(
                    rt,
                    &lab,
                    plan,
                    Mesh::Sidecar,
                    *pair,
                    &client,
                    &servers,
                    &procs,
                )?;
                out.pairs.push(r);
            }
        }
        if sel.scaling {
            let p = scale_point(
                rt,
                &lab,
                plan,
                Mesh::Sidecar,
                size,
                &client,
                &servers,
                &pids,
            )?;
            out.scale.push(p);
        }
    }
    rt.block_on(async move { drop(servers) });
    lab.down().context("removing the lab")?;
    Ok(())
}
