#!/bin/bash
# bench11 helper stage 3c, after stage 3 (oracles first: they tell whether a real case has a gap).
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
while kill -0 "$1" 2>/dev/null; do sleep 10; done
python -u benchmarks/augment.py work --plan $R/plan_bench11_stage3c.txt --latest-start 01:43
echo STAGE3C_DONE
