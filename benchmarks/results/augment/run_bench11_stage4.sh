#!/bin/bash
# bench11 helper stage 4, after stage 3: oracles of the Allen defocus and EM cases, and the
# old real-data benchmark's Allen source model retrained with the learned target encoding
# (to compare with its fixed-range model of 2026-11-22: validation Pearson 0.461, 1500 steps).
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
END=$(date -u -d '01:55' +%s)
ok() { [ $(( $(date -u +%s) + $1 * 60 )) -le "$END" ] || { echo "SKIPPED (time): $2"; false; }; }
while kill -0 "$1" 2>/dev/null; do sleep 15; done
RC=benchmarks/results/real_cases
[ -f $RC/oracle_allen_defocus.json ] || { ok 8 "oracle allen" && python -u benchmarks/real_data.py oracle-case --case allen_defocus --steps 1500; }
[ -f $RC/oracle_em.json ] || { ok 14 "oracle em" && python -u benchmarks/real_data.py oracle-case --case em --steps 1500; }
ok 8 "real_data allen rerun" && python -u benchmarks/real_data.py train --task allen --steps 1500 --out benchmarks/results/real/rerun_issue11
echo STAGE4_DONE
