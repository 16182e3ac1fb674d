#!/bin/bash
# bench11 helper stage 3, after stage 2: seeds 1-2 of the reference cells, real LM-ADDA rows.
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
while kill -0 "$1" 2>/dev/null; do sleep 15; done
python -u benchmarks/augment.py work --plan $R/plan_bench11_stage3.txt --latest-start 01:43
echo STAGE3_DONE
