#!/usr/bin/env bash
# The Table 1 / Table 4 matrix of a recipe as separate jobs, one `gblend` command each, run one after
# another on this machine (a plain loop; `gblend reproduce` does the same with parallel jobs).
#   recipes/batch/matrix.sh recipes/kinetics400.toml "0 1 2"
# Runs whose final.json exists are skipped; an interrupted run is resumed with --resume.
set -euo pipefail
RECIPE=${1:-recipes/demo.toml}
SEEDS=${2:-"0 1 2"}
RESULTS=$(python -c "from gblend_cli.config import load_config, results_dir; print(results_dir(load_config('$RECIPE')))")
LAUNCH=${LAUNCH:-gblend}   # e.g. LAUNCH="torchrun --nproc_per_node=8 -m gblend_cli"

job() {  # job RUN_NAME ARGS...
  local run="$RESULTS/$1"; shift
  [ -f "$run/final.json" ] && { echo "skip $run"; return; }
  local resume=""; [ -f "$run/checkpoints/last.pt" ] && resume="--resume"
  $LAUNCH "$@" --recipe "$RECIPE" --out "$run" $resume
}

for s in $SEEDS; do
  for m in audio rgb flow; do job "unimodal-$m-s$s" train-unimodal --modality "$m" --seed "$s"; done
  for c in audio,rgb rgb,flow audio,flow audio,rgb,flow; do
    n=${c//,/+}
    job "naive-$n-s$s" train-naive --modalities "$c" --seed "$s"
    for mode in offline online; do job "gblend-$mode-$n-s$s" train-gblend --modalities "$c" --mode "$mode" --seed "$s"; done
  done
done
gblend report --recipe "$RECIPE" --results "$RESULTS" --table all --format markdown --out "$RESULTS/report/report.md"
