#!/usr/bin/env bash
# Issue 23, part 3: the CIFAR-10 ResNet-18 table, one row after another under one short budget, each
# row's results written to $OUT as soon as it is done (a call cut by its timeout keeps the rows it
# finished). Run from the project checkout root on the device machine:
#   ROWS="pgd-at trades" bash scripts/gpu-check/cifar10_rows.sh       (carry: [".gpu-data"])
# Data: the full CIFAR-10 in the npz layout (train-1..5.npz + test.npz), either in $DATA or spread over
# the staged folders .gpu-data/{a,b,c} (three calls carry them: README.md), which are linked together;
# pyautoattack's code from .gpu-data/pylib (prepare.sh stages it).
# Budget (the same for every row): the method's CIFAR-10 ResNet-18 recipe (its terms, beta, heads) with
# EPOCHS (10) epochs of SGD at batch BATCH (512), lr LR (0.4 = the recipes' 0.1 scaled to the batch)
# on a cyclic schedule (peak at 40%), momentum 0.9, wd 5e-4, PGD-10 of step 2/255 at Linf eps 8/255,
# seed 0, the recipe's own validation slice; then the last checkpoint is evaluated on the first
# EVAL_N (1,000) test images: clean, PGD-20, CW-30, standard AutoAttack (+ ra-soft for reverse
# attention), the gradient-masking checks. Then: python3 scripts/gpu-check/cifar10_table.py $OUT/rows
#   dry run on a CPU:  DEVICE=cpu SMOKE=1 OUT=/tmp/rows-out DATA=../shared/data/cifar10 ROWS="pgd-at" \
#                      PY=.venv/bin/python bash scripts/gpu-check/cifar10_rows.sh
set -u
OUT=${OUT:-/tmp/cifar10-rows-out}; mkdir -p "$OUT/rows"
LOG="$OUT/cifar10-rows.log"; touch "$LOG"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(pwd)
GPUDATA=${GPUDATA:-$ROOT/.gpu-data}
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; SMOKE=${SMOKE:-0}
BUDGET=${BUDGET:-540}            # seconds for this call's rows; a row is not started with less than NEED left
NEED=${NEED:-120}
ROW_LIMIT=${ROW_LIMIT:-420}      # one row's training + evaluation at most
EPOCHS=${EPOCHS:-10}; BATCH=${BATCH:-512}; LR=${LR:-0.4}; EVAL_N=${EVAL_N:-1000}
ROWS=${ROWS:-"pgd-at trades standard adv-dpnp trades+adr spat trades+anc-ra mart aalp pgd-at+adr alp fgsm-rs"}
RUNS=${RUNS:-/tmp/cifar10-rows-runs}; mkdir -p "$RUNS"
export PYTHONPATH="$ROOT/src:$GPUDATA/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
START=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

if [ -z "${DATA:-}" ]; then   # the three staged folders, linked into one
  DATA=/tmp/cifar10-full; mkdir -p "$DATA"
  for f in "$GPUDATA"/{a,b,c,cifar10}/*.npz; do [ -e "$f" ] && ln -sf "$f" "$DATA/$(basename "$f")"; done
fi
missing=$(for f in train-1 train-2 train-3 train-4 train-5 test; do [ -e "$DATA/$f.npz" ] || echo -n "$f "; done)
if [ -n "$missing" ] && [ "$SMOKE" != 1 ]; then
  log "the full CIFAR-10 is not there: $DATA lacks $missing(stage it in .gpu-data/a, b, c: README.md)"; exit 2
fi

if [ "$SMOKE" = 1 ]; then   # tiny sizes: a CPU dry run of the script itself
  SIZE=(--data.train_subset=64 --data.val_size=32 --model.arch=small-cnn --threat.steps=2 --train.val_steps=2)
  EPOCHS=1; BATCH=32; EVAL_N=32; AA=(--eval.aa_version=custom "--eval.aa_attacks=[apgd-ce]")
  CHECKS=(--eval.checks=false)  # the transfer check's surrogate trains 5 epochs on all of CIFAR-10 (minutes on a CPU)
else
  SIZE=(); AA=(--eval.aa_version=standard); CHECKS=(--eval.checks=true --eval.checks_n=200)
fi

row_setup() {  # row_setup LABEL: sets CONFIG and OWN (the row's own overrides) and ATTACKS
  local label=$1; OWN=(); ATTACKS="pgd,cw,autoattack"
  case $label in
    standard) CONFIG=configs/pgd-at-cifar10-resnet18.yaml; OWN=(--method=standard) ;;
    trades+anc-ra) CONFIG=configs/trades+anc-cifar10-resnet18.yaml; OWN=(--model.ra=true); ATTACKS="pgd,cw,autoattack,ra-soft" ;;
    *) CONFIG=configs/$label-cifar10-resnet18.yaml ;;
  esac
  [ -f "$CONFIG" ] || { log "no recipe $CONFIG for row $label"; return 1; }
}

log "CIFAR-10 rows: device=$DEVICE rows=[$ROWS] epochs=$EPOCHS batch=$BATCH lr=$LR eval_n=$EVAL_N data=$DATA budget=${BUDGET}s"
for label in $ROWS; do
  left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < NEED )); then log "SKIP  $label (${left}s left)"; continue; fi
  row_setup "$label" || continue
  limit=$(( ROW_LIMIT < left ? ROW_LIMIT : left ))
  run=$RUNS/$label; dest=$OUT/rows/$label; rm -rf "$run"; mkdir -p "$dest"
  cmd=("$PY" -m advrep train --config "$CONFIG" --data-dir "$DATA" --device "$DEVICE" --quiet --seed=0 --out "$run"
       --train.epochs="$EPOCHS" --train.batch_size="$BATCH" --train.optimizer=sgd --train.lr="$LR" --train.momentum=0.9
       --train.weight_decay=5e-4 --train.schedule=cyclic --train.peak_epoch=0.4 --threat.eps=8/255
       --threat.step_size=2/255 --threat.steps=10 --eval.after_train=false "${OWN[@]}" "${SIZE[@]}")
  log "BEGIN $label (at most ${limit}s): ${cmd[*]}"
  t0=$(date +%s)
  timeout -k 10 "$limit" "${cmd[@]}" >>"$LOG" 2>&1; rc=$?
  t1=$(date +%s)
  ecmd=("$PY" -m advrep eval "$run" --data-dir "$DATA" --device "$DEVICE" --quiet --checkpoint last --n "$EVAL_N"
        "--eval.attacks=[$ATTACKS]" --eval.pgd_steps=20 --eval.pgd_step_size=2/255 --eval.cw_steps=30 "${AA[@]}"
        "${CHECKS[@]}" --eval.corruptions=none --eval.batch_size=500 --out "$run/eval")
  if (( rc == 0 )); then
    left=$(( limit - (t1 - t0) ))
    log "eval  $label (at most ${left}s): ${ecmd[*]}"
    timeout -k 10 "$left" "${ecmd[@]}" >>"$LOG" 2>&1; rc=$?
  fi
  t2=$(date +%s)
  cp "$run"/{config.yaml,metrics.jsonl} "$dest"/ 2>/dev/null
  cp "$run"/eval/report.{json,md} "$dest"/ 2>/dev/null
  printf '{"label": "%s", "rc": %d, "train_wall_s": %d, "eval_wall_s": %d, "train_command": "%s", "eval_command": "%s"}\n' \
    "$label" "$rc" $(( t1 - t0 )) $(( t2 - t1 )) "${cmd[*]//\"/\\\"}" "${ecmd[*]//\"/\\\"}" > "$dest/row.json"
  log "END   $label rc=$rc train $(( t1 - t0 ))s eval $(( t2 - t1 ))s"
done
"$PY" "$HERE/env_check.py" > "$OUT/env.txt" 2>&1 || true
log "done in $(( $(date +%s) - START ))s"
