#!/bin/bash
# Slot B of the issue-11 completion runs: real-case source models, stages 1-2, oracles, rest.
set -x
cd /work/wt/bench11
export PYTHONPATH=/work/wt/bench11/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=benchmarks/results/augment
for ds in allen em; do
  for aug in basic robust; do
    src=$([ $aug = basic ] && echo plain || echo robust)
    [ -f benchmarks/results/real_cases/models/${ds}_${src}.pt ] || \
      python -u benchmarks/real_data.py train-case --dataset $ds --augment $aug --steps 1500
  done
done
python -u benchmarks/augment.py work --plan $R/plan_issue11.txt
[ -f benchmarks/results/real_cases/oracle_allen_defocus.json ] || python -u benchmarks/real_data.py oracle-case --case allen_defocus --steps 1500
[ -f benchmarks/results/real_cases/oracle_em.json ] || python -u benchmarks/real_data.py oracle-case --case em --steps 1500
[ -f $R/oracle_defocus.json ] || python -u benchmarks/augment.py oracle-synthetic --shift defocus
[ -f benchmarks/results/real_cases/oracle_bpae_noise.json ] || python -u benchmarks/real_data.py oracle-case --case bpae_noise --steps 800
python -u benchmarks/augment.py work --plan $R/plan_issue11_all.txt --wait
echo SLOT_B_DONE
