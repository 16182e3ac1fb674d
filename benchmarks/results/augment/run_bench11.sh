#!/bin/bash
# bench11 helper: one process at a time, stages in priority order (see plan_bench11*.txt).
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
python -u benchmarks/augment.py work --plan $R/plan_bench11.txt
echo STAGE1_DONE
