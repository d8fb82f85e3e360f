#!/bin/sh
# Fine-tune with the published recipe (train.py's defaults), cleaning the data first when a raw
# file has no cleaned copy, or a newer one than its copy (so do the cleaning rules).
#
#   sh train.sh                                   # every visible GPU (torchrun), else the CPU
#   sh train.sh --dataset virus                   # the virus track (both: the two together)
#   sh train.sh --model_name /path/to/bert-base-chinese --epochs 10   # arguments pass through
#   sh train.sh --resume                          # continue an interrupted run
#   NGPU=2 sh train.sh                            # GPUs to use (default: all visible ones)
#   sh train_offline.sh                           # no hub access: a model from the data alone
#
# Relative paths in the arguments are relative to the folder you run it from.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)
SCRIPT=${EWECT_TRAINING_SCRIPT:-train.py}  # pretrain.sh runs pretrain.py through this file

case " $* " in *" -h "*|*" --help "*) exec python "$REPO/$SCRIPT" --help ;; esac  # no cleaning

RAW=${EWECT_RAW_DIR:-$REPO/data/raw}
for FILE in "$RAW"/usual_*.txt "$RAW"/virus_*.txt; do
    CLEAN=$REPO/data/clean/$(basename "$FILE")  # missing, or older than its file or the rules
    if [ -f "$FILE" ] && ! { [ "$CLEAN" -nt "$FILE" ] &&
                             [ "$CLEAN" -nt "$REPO/ewect/cleaning.py" ]; }; then
        python "$REPO/clean_data.py"  # cleans all six
        break
    fi
done

if [ -z "$NGPU" ]; then
    if [ -n "$CUDA_VISIBLE_DEVICES" ]; then
        NGPU=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
    else
        NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
fi

if [ "${NGPU:-0}" -gt 1 ]; then
    exec python -m torch.distributed.run --standalone --nproc_per_node="$NGPU" "$REPO/$SCRIPT" "$@"
fi
exec python "$REPO/$SCRIPT" "$@"
