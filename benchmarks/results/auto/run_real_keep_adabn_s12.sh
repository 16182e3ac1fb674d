#!/bin/bash
# After run_real_keep_adabn.sh: seeds 1 and 2 of the rule before 2 Dec on Allen exposure, scale.
cd "$(dirname "$0")/../../.." || exit 1
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
LOG=benchmarks/results/auto/logs
until grep -q "end keep_adabn allen_defocus" $LOG/run_real_keep_adabn.log; do sleep 5; done
for s in 1 2; do for case in allen_exposure allen_scale; do
  [[ "$(date -u +%H:%M)" > "04:25" ]] && { echo "$(date -u +%T) past 04:25: not starting $case s$s"; continue; }
  echo "$(date -u +%T) start keep_adabn $case s$s"
  python benchmarks/auto_bench.py --case "real:$case" --seed $s --steps 400 --keep-adabn \
    --out benchmarks/results/auto/auto_runs_real_keep_adabn.jsonl > "$LOG/real_${case}_s${s}_keep_adabn.log" 2>&1
  echo "$(date -u +%T) end keep_adabn $case s$s rc=$?"
done; done
echo "$(date -u +%T) all done"
