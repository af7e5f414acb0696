#!/usr/bin/env bash
# The runs of docs/results/ema-awp-mnist.md: train, evaluate the raw and the EMA weights, record.
#
#   scripts/ema_awp_mnist.sh RUNS VARIANT:SEED ...     e.g.  scripts/ema_awp_mnist.sh runs/ema-awp trades:0 pgd-at+awp:1
#
# VARIANT is pgd-at, pgd-at+awp, trades or trades+awp. Each job trains the quickstart recipe with
# a weight EMA (decay 0.995, warmed up) and, for +awp, AWP at the authors' gamma, then evaluates
# the last checkpoint's raw and EMA weights on the first 1,000 MNIST test images (clean, PGD-20,
# AutoAttack's APGD-CE + APGD-T), then records the run under docs/results/ema-awp-mnist/
# (scripts/ema_awp_table.py collect) so the table can be rebuilt without the checkpoints.
# Jobs run one after the other with one torch thread; start two such streams on two cores. A stopped
# job is taken up again by the same command: training resumes, finished evaluations (and finished
# AutoAttack chunks) are kept.
# Environment: DATA_DIR (default ../shared/data/mnist), ADVREP (default .venv/bin/advrep).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; shift
data=${DATA_DIR:-../shared/data/mnist}
advrep=${ADVREP:-.venv/bin/advrep}
python=$(dirname "$advrep")/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for job in "$@"; do
  variant=${job%%:*}; seed=${job##*:}
  case $variant in
    pgd-at) flags=(--method=pgd-at) ;;
    pgd-at+awp) flags=(--method=pgd-at --train.awp_gamma=0.01) ;;
    trades) flags=(--method=trades) ;;
    trades+awp) flags=(--method=trades --train.awp_gamma=0.005) ;;
    *) echo "unknown variant '$variant' (pgd-at, pgd-at+awp, trades, trades+awp)" >&2; exit 2 ;;
  esac
  run=$runs/s$seed/$variant
  if [ -e "$run/last.json" ]; then  # a stopped job: finish its training (nothing to do if it is done)
    echo "$(date +%T) resume $variant seed $seed in $run"
    "$advrep" train --quiet --resume "$run"
  else
    echo "$(date +%T) train $variant seed $seed -> $run"
    "$advrep" train --quiet --config configs/quickstart-mnist.yaml --data-dir "$data" --train.ema=0.995 \
      --train.ema_warmup=true --eval.after_train=false --seed="$seed" "${flags[@]}" --out "$run"
  fi
  for weights in raw ema; do
    if [ -e "$run/eval-$weights/report.json" ]; then continue; fi
    echo "$(date +%T) evaluate $variant seed $seed, $weights weights"
    "$advrep" eval "$run" --quiet --checkpoint last --eval.checks=false --eval.corruptions=none --n 1000 \
      --eval.weights="$weights" '--eval.attacks=[pgd,autoattack]' --eval.pgd_steps=20 --eval.pgd_step_size=0.03 \
      --eval.batch_size=250 --eval.aa_version=custom '--eval.aa_attacks=[apgd-ce,apgd-t]' --out "$run/eval-$weights"
  done
  "$python" scripts/ema_awp_table.py collect "$runs" docs/results/ema-awp-mnist
done
