#!/usr/bin/env bash
# A recipe's whole matrix -- exactly the runs `gblend reproduce` runs, from
# `gblend reproduce --print-commands` -- one command after another on this machine, then the report.
#
#   recipes/batch/matrix.sh [REPRODUCE OPTIONS] [-- OPTIONS FOR EVERY RUN]
#   recipes/batch/matrix.sh --recipe kinetics400 --seeds 0,1,2
#   recipes/batch/matrix.sh --seeds 0 -- --workers 4          # extra options go to every train command
#   recipes/batch/matrix.sh --table 5 --seeds 0               # the runs of Table 5 (also 3, fig1, all, methods)
#   LAUNCHER="torchrun --nproc_per_node=8 -m gblend_cli" recipes/batch/matrix.sh --recipe kinetics400
#
# REPRODUCE OPTIONS are those of `gblend reproduce` (--recipe, --seeds, --results, --set ...).
# Finished runs are skipped, interrupted ones resumed (--resume), so rerunning continues. Paths in
# the printed commands are absolute: the script works from any folder. gblend is the one installed
# beside this repository (.venv/bin/gblend) when there is one, else $GBLEND, else `gblend` on PATH.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
if [ -z "${GBLEND:-}" ]; then
  if [ -x "$REPO/.venv/bin/gblend" ]; then GBLEND="$REPO/.venv/bin/gblend"; else GBLEND=gblend; fi
fi
LAUNCHER=${LAUNCHER:-$GBLEND}
read -r -a GB <<< "$GBLEND"   # GBLEND may be several words, e.g. "python -m gblend_cli"

OPTS=(); EXTRA=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
  OPTS+=("$1"); shift
done
EXTRA_Q=""
for a in "${EXTRA[@]+"${EXTRA[@]}"}"; do EXTRA_Q+=" $(printf '%q' "$a")"; done

COMMANDS=$("${GB[@]}" reproduce --print-commands --launcher "$LAUNCHER" "${OPTS[@]+"${OPTS[@]}"}")
while IFS= read -r line; do
  [ -n "$line" ] || continue
  if [ -n "${DRY_RUN:-}" ]; then echo "$line$EXTRA_Q"; else eval "$line$EXTRA_Q"; fi
done <<< "$COMMANDS"
if [ -z "${DRY_RUN:-}" ]; then  # the tables, from the options report shares with reproduce
  REPORT=(); i=0
  while [ $i -lt ${#OPTS[@]} ]; do
    case "${OPTS[$i]}" in
      --recipe|-r|--results|--set|--table|-t) REPORT+=("${OPTS[$i]}" "${OPTS[$((i + 1))]}"); i=$((i + 2)) ;;
      --recipe=*|--results=*|--set=*|--table=*) REPORT+=("${OPTS[$i]}"); i=$((i + 1)) ;;
      *) i=$((i + 1)) ;;
    esac
  done
  "${GB[@]}" report "${REPORT[@]+"${REPORT[@]}"}"   # the tables of --table (default 1, 4 and overfit)
fi
