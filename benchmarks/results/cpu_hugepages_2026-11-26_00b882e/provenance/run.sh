#!/usr/bin/env bash
# A/B of vae_jax/hugepages.py: training throughput with and without GLIBC_TUNABLES=glibc.malloc.hugetlb=1,
# alternating, each run in its own process (benchmarks.throughput, batch 100, latent 50).
#   bash benchmarks/results/cpu_hugepages_2026-11-26_00b882e/provenance/run.sh [ROUNDS] [OUTDIR]
set -euo pipefail
rounds=${1:-5}
out=${2:-benchmarks/results/cpu_hugepages_2026-11-26_00b882e}
for r in $(seq 1 "$rounds"); do
  for fw in jax tf; do
    [ "$fw" = tf ] && [ "$r" -gt 2 ] && continue  # TF only in the first two rounds
    env -u GLIBC_TUNABLES VAE_JAX_HUGE_PAGES=0 python -m benchmarks.throughput --framework "$fw" --steps 300 \
      --out "$out/round${r}_${fw}_4k.json"
    env -u VAE_JAX_HUGE_PAGES python -m benchmarks.throughput --framework "$fw" --steps 300 --out "$out/round${r}_${fw}_thp.json"
  done
done
python - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "round*_*.json"))):
  r, fw, pages = os.path.basename(path)[:-5].split("_")
  rows.setdefault((fw, r), {})[pages] = json.load(open(path))
lines = ["| framework | round | 4 KiB pages (img/s) | huge pages (img/s) | speed-up | tunables seen |",
         "|---|---|---:|---:|---:|---|"]
ups = {}
for (fw, r), d in sorted(rows.items()):
  a, b = d["4k"]["images_per_sec"], d["thp"]["images_per_sec"]
  ups.setdefault(fw, []).append(b / a)
  lines.append(f"| {fw} | {r} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | `{d['thp'].get('glibc_tunables', '')}` |")
lines.append("")
for fw, u in ups.items():
  lines.append(f"- {fw}: median speed-up {statistics.median(u):.3f} over {len(u)} rounds")
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
