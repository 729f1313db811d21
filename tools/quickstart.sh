#!/usr/bin/env bash
# The whole workflow on the built-in toy dataset, on the CPU, in a few minutes (set-up included;
# --latest: on the newest versions setup.py allows instead of requirements-lock.txt):
#   toy images -> .lst + .rec/.idx (tools/im2rec.py) -> torchrun with 2 processes -> Ctrl-C in the
#   middle of an epoch -> tools/resume.py with a lower LR -> tools/evaluate.py -> tools/plot_log.py
# Environment: QUICKSTART_DIR (default: the repo; data/, logs/, checkpoints/ under it),
# QUICKSTART_EPOCHS (12), QUICKSTART_STOP_EPOCH (5), QUICKSTART_IMAGES_PER_CLASS (250),
# QUICKSTART_LOG_EVERY (10 batches; the Ctrl-C comes at the first batch line of the stop epoch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=.venv
if [ "${1:-}" = "--latest" ]; then   # the newest versions setup.py allows, in .venv-latest
    VENV=.venv-latest
    bash tools/setup_env.sh --latest
else
    bash tools/setup_env.sh
fi
PY=$REPO/$VENV/bin/python
TORCHRUN=$REPO/$VENV/bin/torchrun
OUT=${QUICKSTART_DIR:-$REPO}
EPOCHS=${QUICKSTART_EPOCHS:-12}
STOP_EPOCH=${QUICKSTART_STOP_EPOCH:-5}
PER_CLASS=${QUICKSTART_IMAGES_PER_CLASS:-250}
LOG_EVERY=${QUICKSTART_LOG_EVERY:-10}
DATA=$OUT/data/toy
PREFIX=toy_resnet18
LOGS=$OUT/logs
CKPT=$OUT/checkpoints
LOG=$LOGS/$PREFIX.log
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # 2 processes on a small machine: one thread each
step() { printf '\n==> %s\n' "$*"; }

step "1. toy images: 10 classes of drawn shapes in $DATA/images"
"$PY" tools/make_toy.py --out "$DATA/images" --images-per-class "$PER_CLASS" --images-only

step "2. lists and record shards, as with MXNet's im2rec"
"$PY" tools/im2rec.py --list --recursive --train-ratio 0.8 "$DATA/toy" "$DATA/images"
"$PY" tools/im2rec.py --num-thread 2 --quality 95 "$DATA/toy" "$DATA/images"

step "3. train resnet18 (width 0.25, 64 px) with torchrun, 2 processes on the CPU; Ctrl-C during Epoch[$STOP_EPOCH]"
rm -f "$LOG" "$CKPT/$PREFIX"-*.pt
mkdir -p "$LOGS"
# its own process group, so that the SIGINT below reaches torchrun and both ranks, as Ctrl-C does
setsid "$TORCHRUN" --standalone --nproc_per_node=2 tools/train.py --recipe resnet18 --width 0.25 \
    --image-size 64 --min-crop-scale 0.35 --batch-size 32 --epochs "$EPOCHS" --lr 0.2 \
    --lr-schedule constant --warmup-epochs 0.5 --log-every "$LOG_EVERY" --data "$DATA" --prefix "$PREFIX" \
    --logs-dir "$LOGS" --checkpoints-dir "$CKPT" &
TRAIN=$!
until grep -q "Epoch\[$STOP_EPOCH\] Batch \[" "$LOG" 2>/dev/null; do
    kill -0 $TRAIN 2>/dev/null || { echo "training ended before Epoch[$STOP_EPOCH]" >&2; exit 1; }
    sleep 0.2
done
step "   Ctrl-C (SIGINT to the process group)"
kill -INT -- -$TRAIN
wait $TRAIN || true   # torchrun reports the SIGINT it got with a traceback of its own; the ranks stopped cleanly
STOP=$(ls -t "$CKPT/$PREFIX"-*.pt | head -1)   # PREFIX-EEEE-bBBBBBB.pt (or PREFIX-EEEE.pt at an epoch's end)
echo "stopped; checkpoint: $STOP"

step "4. resume from it with a lower LR (0.02, constant from here)"
"$TORCHRUN" --standalone --nproc_per_node=2 tools/resume.py --prefix "$PREFIX" --checkpoints-dir "$CKPT" --lr 0.02

step "5. evaluate the last epoch's checkpoint on the validation split"
"$PY" tools/evaluate.py --prefix "$PREFIX" --checkpoints-dir "$CKPT" --epoch "$EPOCHS" --json | tee "$LOGS/$PREFIX-eval.txt"

step "6. plot the log"
"$PY" tools/plot_log.py "$LOG" --out "$LOGS/$PREFIX.png" --csv "$LOGS/$PREFIX.csv"

step "done"
echo "log:         $LOG"
echo "checkpoints: $CKPT/$PREFIX-NNNN.pt (one per epoch; the Ctrl-C one: $(basename "$STOP"))"
echo "evaluation:  $LOGS/$PREFIX-eval.txt and the per-class and confusion CSVs beside it"
echo "curves:      $LOGS/$PREFIX.png (table: $LOGS/$PREFIX.csv)"
