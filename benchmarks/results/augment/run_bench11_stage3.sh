#!/bin/bash
# bench11 helper stage 3, after stage 2: reference seeds, real LM-ADDA at the recommended
# layer (seed 0), the old real-data benchmark's Allen source model retrained with the learned
# target encoding (its fixed-range model of 2026-11-22: validation Pearson 0.461, 1500 steps),
# then the remaining seeds, then the Allen-defocus and EM oracles if time is left.
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
RC=benchmarks/results/real_cases
END=$(date -u -d '01:55' +%s)
ok() { [ $(( $(date -u +%s) + $1 * 60 )) -le "$END" ] || { echo "SKIPPED (time): $2"; false; }; }
while kill -0 "$1" 2>/dev/null; do sleep 15; done
python -u benchmarks/augment.py work --plan $R/plan_bench11_stage3a.txt --latest-start 01:43
[ -f benchmarks/results/real/rerun_issue11/models/source_allen_s0.json ] || { ok 8 "real_data allen rerun" && python -u benchmarks/real_data.py train --task allen --steps 1500 --out benchmarks/results/real/rerun_issue11; }
python -u benchmarks/augment.py work --plan $R/plan_bench11_stage3b.txt --latest-start 01:43
[ -f $RC/oracle_allen_defocus.json ] || { ok 8 "oracle allen" && python -u benchmarks/real_data.py oracle-case --case allen_defocus --steps 1500; }
[ -f $RC/oracle_em.json ] || { ok 10 "oracle em" && python -u benchmarks/real_data.py oracle-case --case em --steps 1500; }
echo STAGE3_DONE
