#!/bin/bash
# bench11 helper stage 2: real-case source models (Allen robust, EM plain/robust) and their
# none/AdaBN rows, the Allen 16-bit fixed-range training (before issue 11), after stage 1.
# One process at a time; a step starts only if its estimated duration ends before 01:55 UTC.
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
M=benchmarks/results/real_cases/models
END=$(date -u -d '01:55' +%s)
ok() { [ $(( $(date -u +%s) + $1 * 60 )) -le "$END" ] || { echo "SKIPPED (time): $2"; false; }; }
while kill -0 "$1" 2>/dev/null; do sleep 15; done
[ -f $M/allen_robust.pt ] || { ok 10 "allen robust" && python -u benchmarks/real_data.py train-case --dataset allen --augment robust --steps 1500; }
ok 5 "allen plan" && python -u benchmarks/augment.py work --plan $R/plan_bench11_allen.txt
ok 4 "allen fixed" && python -u benchmarks/target_norm.py --case allen_exposure --modes fixed --steps 600
[ -f $M/em_plain.pt ] || { ok 14 "em plain" && python -u benchmarks/real_data.py train-case --dataset em --augment basic --steps 1500; }
[ -f $M/em_robust.pt ] || { ok 14 "em robust" && python -u benchmarks/real_data.py train-case --dataset em --augment robust --steps 1500; }
ok 5 "em plan" && python -u benchmarks/augment.py work --plan $R/plan_bench11_em.txt
echo STAGE2_DONE
