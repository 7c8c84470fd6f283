#!/usr/bin/env bash
# scripts/grpo_demo_sweep.sh — scripts/grpo_demo.sh over seeds x OpenBLAS kernels, one table at the end:
# the weak model's and the GRPO model's held-out exact match and the gain, per run, then mean +- std and
# the smallest gain. The claim it checks: GRPO adds >= 15 points on every run.
#   SEEDS ("1 2 3")  KERNELS ("native Haswell": native = the core reftrain picks from the CPU flags)
#   RUNS (runs/grpo_sweep)   extra arguments go to `reftrain rl`
# About 3.5 minutes per run on 2 cores (21 minutes for the default 6).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-runs/grpo_sweep}
mkdir -p "$runs"
table=$runs/table.tsv
printf "kernel\tseed\tsft_stop_step\tweak_test\tgrpo_test\tgain\n" > "$table"
for kernel in ${KERNELS:-native Haswell}; do
  for seed in ${SEEDS:-1 2 3}; do
    dir=$runs/$kernel-seed$seed
    log=$runs/$kernel-seed$seed.log
    if [ "$kernel" = native ]; then
      SEED=$seed RUNS=$dir "$root/scripts/grpo_demo.sh" "$@" > "$log" 2>&1
    else
      OPENBLAS_CORETYPE=$kernel SEED=$seed RUNS=$dir "$root/scripts/grpo_demo.sh" "$@" > "$log" 2>&1
    fi
    line=$(grep -E "^GRPO: held-out exact match" "$log")
    weak=$(sed -E 's/.*match ([0-9.]+)% -> .*/\1/' <<< "$line")
    after=$(sed -E 's/.* -> ([0-9.]+)% .*/\1/' <<< "$line")
    stop=$(grep -oE "stopping at step [0-9]+" "$log" | grep -oE "[0-9]+$" || echo "none")
    printf "%s\t%s\t%s\t%s\t%s\t%.1f\n" "$kernel" "$seed" "$stop" "$weak" "$after" "$(awk -v a="$after" -v w="$weak" 'BEGIN { print a - w }')" >> "$table"
    echo "$kernel seed $seed: $line (SFT stopped at step $stop; blas: $(grep -m1 '^blas:' "$log" | sed 's/^blas: //' | cut -c1-60))"
  done
done
echo
python3 - "$table" <<'PYEOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(f"{'kernel':10s} {'seed':>4s} {'SFT stop':>8s} {'weak %':>7s} {'GRPO %':>7s} {'gain':>6s}")
for r in rows:
    print(f"{r['kernel']:10s} {r['seed']:>4s} {r['sft_stop_step']:>8s} {float(r['weak_test']):7.1f} "
          f"{float(r['grpo_test']):7.1f} {float(r['gain']):+6.1f}")
for key in ("weak_test", "grpo_test", "gain"):
    v = [float(r[key]) for r in rows]
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"{key}: mean {statistics.mean(v):.1f} +- {sd:.1f} (std over {len(v)} runs), min {min(v):.1f}, max {max(v):.1f}")
gains = [float(r["gain"]) for r in rows]
print(f"GRPO gain >= 15 points on every run: {'yes' if min(gains) >= 15 else 'NO'} (smallest {min(gains):.1f})")
PYEOF
