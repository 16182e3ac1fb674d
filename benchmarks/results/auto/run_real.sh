#!/bin/bash
# Issue 13, item 3: auto on the real cases, one job at a time, one thread (2 Dec 2026).
# Per case: baselines (none, AdaBN; only where benchmarks/results/augment has none), auto
# seeds 0-2 (400 steps), the oracle. No job starts after LATEST (UTC HH:MM).
cd "$(dirname "$0")/../../.." || exit 1
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
LOG=benchmarks/results/auto/logs
LATEST=${LATEST:-04:40}
late() { [[ "$(date -u +%H:%M)" > "$LATEST" ]] && { echo "$(date -u +%T) past $LATEST: not starting $*"; return 0; }; return 1; }
job() {  # name, command...
  local name=$1; shift
  late "$name" && return
  echo "$(date -u +%T) start $name"
  local t0=$SECONDS
  "$@" > "$LOG/$name.log" 2>&1
  echo "$(date -u +%T) end $name rc=$? $((SECONDS - t0)) s"
}
for case in ${CASES:-em allen_defocus allen_exposure bpae_exposure bpae_scale allen_scale allen_noise bpae_noise}; do
  case $case in em|allen_defocus|bpae_defocus|bpae_noise) ;;
    *) job "baselines_$case" python benchmarks/real_cases.py --baselines --cases "$case" ;;
  esac
  if [[ $case != bpae_defocus && $case != bpae_noise ]]; then
    for s in 0 1 2; do
      job "real_${case}_s$s" python benchmarks/auto_bench.py --case "real:$case" --seed $s \
        --steps 400 --out benchmarks/results/auto/auto_runs_real.jsonl
    done
  fi
  steps=1500; [[ $case == bpae_* ]] && steps=800
  [[ -f benchmarks/results/real_cases/oracle_$case.json ]] ||
    job "oracle_$case" python benchmarks/real_data.py oracle-case --case "$case" --steps $steps
done
echo "$(date -u +%T) all done"
