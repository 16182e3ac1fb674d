#!/bin/bash
# bench11 helper, final stage (01:19): after the last stage-3a run, the old real-data
# benchmark's Allen source model with the learned target encoding (its fixed-range model of
# 2026-11-22: validation Pearson 0.461, 1500 steps), then seeds 1-2 of the real LM-ADDA rows
# until 01:31 UTC; the whole test suite needs the machine after that. Oracles and the extra
# synthetic seeds (plan_bench11_stage3c.txt) are cut.
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
while kill -0 "$1" 2>/dev/null; do sleep 5; done
python -u benchmarks/real_data.py train --task allen --steps 1500 --out benchmarks/results/real/rerun_issue11
python -u benchmarks/augment.py work --plan $R/plan_bench11_stage3b.txt --latest-start 01:31
echo FINAL_DONE
