#!/bin/bash
# bench11 helper stage 2: real-case source models (Allen robust, EM plain/robust) and their
# none/AdaBN rows, after stage 1 (one process at a time).
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
M=benchmarks/results/real_cases/models
while kill -0 "$1" 2>/dev/null; do sleep 15; done
[ -f $M/allen_robust.pt ] || python -u benchmarks/real_data.py train-case --dataset allen --augment robust --steps 1500
python -u benchmarks/augment.py work --plan $R/plan_bench11_allen.txt
[ -f $M/em_plain.pt ] || python -u benchmarks/real_data.py train-case --dataset em --augment basic --steps 1500
[ -f $M/em_robust.pt ] || python -u benchmarks/real_data.py train-case --dataset em --augment robust --steps 1500
python -u benchmarks/augment.py work --plan $R/plan_bench11_em.txt
echo STAGE2_DONE
