#!/usr/bin/env bash
# A/B of ambit builds on the modes bench, in interleaved rounds, with ztunnel as the reference.
#
#   sudo -E benches/ab.sh ROUNDS NAME=BINARY [NAME=BINARY ...] [-- BENCH ARGS]
#
# Build each variant first and copy its binary aside (e.g. `cargo build --release --bin ambit
# && cp target/release/ambit /tmp/ambit-base`). Every round runs, in an order that rotates from
# round to round, one bench per variant (AMBIT_BIN=BINARY, `--meshes=ambient`) and one with
# `--meshes=ztunnel`; all of them with `--modes-only --no-scaling --pairs=cross-node` unless
# BENCH ARGS say otherwise (BENCH ARGS are appended; later flags win). Each run's modes.json is
# kept as target/bench/ab/<name>-<round>.json; the summary (median and range over rounds of
# each figure) is printed and written to target/bench/ab/summary.md. The bench binary itself is
# built once and copied to target/bench/ab/throughput (or given as $AB_BENCH).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
rounds=$1
shift
variants=()
while [[ $# -gt 0 && $1 != -- ]]; do
    [[ $1 == *=* ]] || { echo "ab.sh: expected NAME=BINARY, got $1" >&2; exit 2; }
    [[ -x ${1#*=} ]] || { echo "ab.sh: ${1#*=} is not an executable" >&2; exit 2; }
    variants+=("$1")
    shift
done
[[ ${1:-} == -- ]] && shift
extra=("$@")

repo=$(cd "$(dirname "$0")/.." && pwd)
out="${CARGO_TARGET_DIR:-$repo/target}/bench/ab"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log
base=(--modes-only --no-scaling --pairs=cross-node)

# The bench binary is copied aside once, so builds of the next variant can run meanwhile.
bench=${AB_BENCH:-}
if [[ -z $bench ]]; then
    bench=$(cd "$repo" && cargo bench --bench throughput --no-run --message-format=json |
        python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == "throughput":
        print(m["executable"])' | tail -1)
    cp "$bench" "$out/throughput"
    bench="$out/throughput"
fi

run() { # NAME MESHES [AMBIT_BIN]
    local name=$1 meshes=$2 bin=${3:-}
    echo "== round $round: $name" >&2
    if [[ -n $bin ]]; then export AMBIT_BIN=$bin; else unset AMBIT_BIN; fi
    "$bench" --bench "${base[@]}" "--meshes=$meshes" "${extra[@]}" >/dev/null 2>"$out/$name-$round.log"
    cp "${CARGO_TARGET_DIR:-$repo/target}/bench/modes.json" "$out/$name-$round.json"
}

for ((round = 1; round <= rounds; round++)); do
    entries=("ztunnel=" "${variants[@]}")
    n=${#entries[@]}
    for ((i = 0; i < n; i++)); do
        e=${entries[$(((i + round) % n))]}
        if [[ $e == ztunnel= ]]; then
            run ztunnel ztunnel
        else
            run "${e%%=*}" ambient "${e#*=}"
        fi
    done
done

python3 - "$out" <<'PY' | tee "$out/summary.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path).rsplit("-", 1)[0]
    runs.setdefault(name, []).append(json.load(open(path)))

def side(windows, key):
    gib = sum(w["bytes"] for w in windows) / 2**30
    return sum(w[key] for w in windows) / gib if gib else float("nan")

def put(f, name, compute):
    # A test left out with --tests has nulls (or no section): its figures are left out too.
    try:
        v = compute()
    except (KeyError, TypeError):
        return
    if v is not None:
        f[name] = v

def conn_cpu_us(c):
    cpu = sum(v for n, v in c["cpu_percent"].items() if n != "bench")
    return cpu / 100 * c["seconds"] / max(c["completed"], 1) * 1e6

def figures(doc):
    f = {}
    for p in doc["pairs"]:
        if p["mode"] == "direct":
            continue
        k = p["pair"]
        put(f, f"{k} 1 stream Gbit/s", lambda: p["stream_1"]["gbit_per_s_median"])
        put(f, f"{k} 8 streams Gbit/s", lambda: p["streams_8"]["gbit_per_s_median"])
        put(f, f"{k} CPU s/GiB client (1 stream)",
            lambda: side(p["stream_1"]["windows"], "client_proxy_cpu_s"))
        put(f, f"{k} CPU s/GiB server (1 stream)",
            lambda: side(p["stream_1"]["windows"], "server_proxy_cpu_s"))
        put(f, f"{k} new conn/s", lambda: p["new_connections"]["per_second"])
        put(f, f"{k} new conn p99 µs", lambda: p["new_connections"]["p99_us"])
        put(f, f"{k} proxy CPU µs per new conn", lambda: conn_cpu_us(p["new_connections"]))
        put(f, f"{k} RR@1000 p50 µs", lambda: p["rr_1k_paced"]["p50_us"])
        put(f, f"{k} RR@1000 p99 µs", lambda: p["rr_1k_paced"]["p99_us"])
        put(f, f"{k} RR closed req/s", lambda: p["rr_1k_closed_loop"]["per_second"])
    for i in doc.get("idle_connections", []):
        f["idle KiB per conn"] = i["kib_per_connection"]
    return f

names = ["ztunnel"] + [n for n in runs if n != "ztunnel"]
names = [n for n in names if n in runs]
table = {n: [figures(d) for d in runs[n]] for n in names}
keys = []
for n in names:
    for f in table[n]:
        keys += [k for k in f if k not in keys]
print("| figure | " + " | ".join(f"{n} (median, range of {len(table[n])})" for n in names) + " |")
print("|---|" + "---:|" * len(names))
for k in keys:
    cells = []
    for n in names:
        v = [f[k] for f in table[n] if k in f and f[k] == f[k]]
        cells.append(f"{statistics.median(v):.3g} ({min(v):.3g}–{max(v):.3g})" if v else "–")
    print(f"| {k} | " + " | ".join(cells) + " |")
PY
