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
# an interruption: finished folds are kept, an interrupted one resumes.
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

for k in $(seq 1 "$K"); do
    if grep -qs "done: best eval" "$OUT/fold$k/train.log"; then
        echo "fold $k of $K: finished earlier, kept"
        continue
    fi
    RESUME=
    [ -f "$OUT/fold$k/last/training_state.pt" ] && RESUME=--resume
    sh "$REPO/train.sh" "$@" --folds "$K" --fold "$k" --output_dir "$OUT/fold$k" $RESUME
done

set --
for k in $(seq 1 "$K"); do
    set -- "$@" "$OUT/fold$k/best"
done
exec sh "$REPO/test.sh" --dataset "$DATASET" --output_dir "$OUT/test" \
    ${TEST_FILES:+--data_file $TEST_FILES} --model_dir "$@"
