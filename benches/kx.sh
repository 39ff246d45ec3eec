#!/usr/bin/env bash
# TLS cost A/B: *ring* vs aws-lc-rs, and classical vs post-quantum key exchange.
#
#   sudo -E benches/kx.sh ROUNDS RING_BIN AWS_BIN [-- BENCH ARGS]
#
# RING_BIN is an ambit built with *ring* (main 0d93d37, the commit before the switch), AWS_BIN one
# built with aws-lc-rs; build both alike, e.g. with `CARGO_PROFILE_RELEASE_LTO=false
# CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --bin ambit`. Three variants:
# ring (classical: X25519, the only kind ring has), aws-classical (AWS_BIN under
# AMBIT_TLS_POLICY=classical, through a wrapper script) and aws-pq (AWS_BIN, default policy:
# X25519MLKEM768). ring vs aws-classical isolates the provider, aws-classical vs aws-pq the key
# exchange.
#
# 1. `benches/ab.sh ROUNDS` over the three (plus ztunnel): HBONE single-stream and 8-stream
#    throughput, CPU per GiB per side, new connections per second (pooled: new streams), with
#    BENCH ARGS appended (e.g. `--pairs=cross-node --quick`).
# 2. Full handshakes: per round and variant, the bench's first part (`--quick`, AMBIT_BIN = the
#    variant), whose last test opens new HBONE connections to n2-p1:15008 one after another
#    (TCP + mutual TLS 1.3 without resumption + HTTP/2 + one CONNECT); the bench is the client
#    (aws-lc-rs, offering X25519MLKEM768 and X25519), the variant the server. Prints handshakes
#    per second and the server daemon's CPU per handshake.
# Output: target/bench/ab/summary.md (part 1), target/bench/kx/*.json and summary.md (part 2).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
rounds=$1 ring=$2 aws=$3
shift 3
[[ ${1:-} == -- ]] && shift
extra=("$@")
for b in "$ring" "$aws"; do
    [[ -x $b ]] || { echo "kx.sh: $b is not an executable" >&2; exit 2; }
done

repo=$(cd "$(dirname "$0")/.." && pwd)
target="${CARGO_TARGET_DIR:-$repo/target}"
out="$target/bench/kx"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log
classical="$out/ambit-aws-classical"
printf '#!/bin/sh\nAMBIT_TLS_POLICY=classical exec %q "$@"\n' "$aws" >"$classical"
chmod +x "$classical"
variants=("ring=$ring" "aws-classical=$classical" "aws-pq=$aws")

"$repo/benches/ab.sh" "$rounds" "${variants[@]}" -- "${extra[@]}"
# ab.sh left the bench binary here.
bench=${AB_BENCH:-$target/bench/ab/throughput}

for ((round = 1; round <= rounds; round++)); do
    n=${#variants[@]}
    for ((i = 0; i < n; i++)); do
        e=${variants[$(((i + round) % n))]}
        name=${e%%=*}
        echo "== handshakes round $round: $name" >&2
        AMBIT_BIN=${e#*=} "$bench" --bench --quick --meshes=direct --pairs=cross-node \
            --no-scaling --tests=rr >/dev/null 2>"$out/$name-$round.log"
        cp "$target/bench/throughput.json" "$out/$name-$round.json"
    done
done

python3 - "$out" <<'PY' | tee "$out/summary.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path).rsplit("-", 1)[0]
    h = json.load(open(path))["hbone_handshakes"]["result"]
    cpu = h["cpu_percent"].get("ambit n2", float("nan"))
    runs.setdefault(name, []).append(
        (h["per_second"], cpu / 100 * h["seconds"] / max(h["completed"], 1) * 1e6, h["p99_us"]))
print("| full HBONE handshakes | " + " | ".join(runs) + " |")
print("|---|" + "---:|" * len(runs))
for i, label in enumerate(["per second", "server CPU µs per handshake", "p99 µs"]):
    cells = []
    for v in runs.values():
        xs = [r[i] for r in v if r[i] == r[i]]
        cells.append(f"{statistics.median(xs):.3g} ({min(xs):.3g}–{max(xs):.3g})" if xs else "–")
    print(f"| {label} (median, range) | " + " | ".join(cells) + " |")
PY
