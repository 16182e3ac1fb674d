#!/bin/bash
# After run_real.sh: auto with the rule before 2 Dec (AdaBN may be kept if stable under flips
# and rotations) on the real cases where the current rule did harm, seed 0, 400 steps.
cd "$(dirname "$0")/../../.." || exit 1
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
LOG=benchmarks/results/auto/logs
LATEST=${LATEST:-04:40}
until grep -q "all done" $LOG/run_real.log; do sleep 10; done
for case in ${CASES:-allen_exposure allen_scale allen_defocus}; do
  [[ "$(date -u +%H:%M)" > "$LATEST" ]] && { echo "$(date -u +%T) past $LATEST: not starting $case"; continue; }
  echo "$(date -u +%T) start keep_adabn $case"
  python benchmarks/auto_bench.py --case "real:$case" --seed 0 --steps 400 --keep-adabn \
    --out benchmarks/results/auto/auto_runs_real_keep_adabn.jsonl > "$LOG/real_${case}_s0_keep_adabn.log" 2>&1
  echo "$(date -u +%T) end keep_adabn $case rc=$?"
done
