#!/bin/sh
# Train a K-fold ensemble and test it. Fold k trains on the other K-1 parts of the training files
# and picks its best epoch on part k (train.py --folds K --fold k); test.py then averages the K
# members' probabilities (5 folds: +2.75 usual, +5.8 virus eval macro-F1 over one model in a
# competition team's log; measured here: bench/RESULTS.md).
#
#   sh train_folds.sh 5 workspace/folds                              # the usual track
#   sh train_folds.sh 5 workspace/folds_virus --dataset virus --epochs 10   # train.py's flags
#
#   TEST_FILES="a.json b.csv" sh train_folds.sh 5 workspace/folds --train_file x.json  # own data
#
# Writes OUT/fold1 ... OUT/foldK, each a train.py output folder, and OUT/test (test.py's outputs
# for the ensemble, on --dataset's test files or on TEST_FILES, space-separated). Run again after
# an interruption: finished folds are kept, an interrupted one resumes; a fold finished with
# other arguments (K, --dataset, any train.py flag) is refused, not mixed in.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 2 ] || ! [ "$1" -ge 2 ] 2>/dev/null; then
    echo "error: usage: sh train_folds.sh K OUTPUT_DIR [train.py arguments]  (K: 2 or more folds)" >&2
    exit 2
fi
K=$1 OUT=$2
shift 2
DATASET=usual previous=
for arg in "$@"; do  # the track test.sh tests: train.py's --dataset X or --dataset=X
    [ "$previous" = --dataset ] && DATASET=$arg
    case $arg in --dataset=*) DATASET=${arg#--dataset=} ;; esac
    previous=$arg
done

SETUP="$K $*"  # a finished fold is kept only when made by this same K and flags
for k in $(seq 1 "$K"); do
    FOLD=$OUT/fold$k
    if grep -qs "done: best eval" "$FOLD/train.log"; then
        if [ -f "$FOLD/setup" ] && [ "$(cat "$FOLD/setup")" != "$SETUP" ]; then
            echo "error: $FOLD was trained by sh train_folds.sh $(cat "$FOLD/setup"), not by" \
                "these arguments; choose another OUTPUT_DIR, or delete $OUT to redo it" >&2
            exit 2
        fi
        echo "fold $k of $K: finished earlier, kept"
        continue
    fi
    RESUME=
    [ -f "$FOLD/last/training_state.pt" ] && RESUME=--resume
    sh "$REPO/train.sh" "$@" --folds "$K" --fold "$k" --output_dir "$FOLD" $RESUME
    ! grep -qs "done: best eval" "$FOLD/train.log" || echo "$SETUP" > "$FOLD/setup"
done

set --
for k in $(seq 1 "$K"); do
    set -- "$@" "$OUT/fold$k/best"
done
exec sh "$REPO/test.sh" --dataset "$DATASET" --output_dir "$OUT/test" \
    ${TEST_FILES:+--data_file $TEST_FILES} --model_dir "$@"
