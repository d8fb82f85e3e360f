#!/usr/bin/env bash
# The first 12-layer model of this repo: a bert-base-shape BERT (12 layers, hidden 768) pretrained
# with masked-LM on the task's own corpus (the train and eval posts of both tracks, never a test
# file) for a fixed time, then fine-tuned on usual_train and tested on usual_test. It is NOT
# comparable with bert-base-chinese, which was pretrained on far more text for far longer.
#
#   bash bench/gpu_bert_base.sh [SECONDS]   # on a GPU machine, after bench/gpu_check.sh (default 240)
#
# Reads what `bash bench/gpu_check.sh --prepare` put in .device/ (raw files, vocab.txt). The
# pretraining epochs are sized to SECONDS from the wall time of the check's one-epoch stage
# (in $OUT/gpu_check.json), and cut by a time limit if they run over (best/ is kept every epoch).
# Logs go to $OUT (or workspace/gpu_check).
set -eu
cd "$(dirname "$0")/.."
SECONDS_GIVEN=${1:-240}
PYTHON=$(command -v python3 || command -v python)
OUT_DIR=${OUT:-workspace/gpu_check}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
"$PYTHON" clean_data.py --raw_dir .device/raw --out_dir "$WORK/clean" > /dev/null
C=$WORK/clean
# An epoch of the masked-LM corpus (about 1.4 times usual_train's posts, and the vocabulary's
# output layer) costs about 1.5 times the check's train.py epoch; most of the time goes to it,
# about 90 s is kept for fine-tuning and testing.
EPOCHS=$("$PYTHON" - "$OUT_DIR/gpu_check.json" "$SECONDS_GIVEN" <<'PY'
import json, os, sys
path, seconds = sys.argv[1], float(sys.argv[2])
epoch = json.load(open(path))["epoch"]["seconds"] if os.path.isfile(path) else 30.0
print(max(1, min(40, int((seconds - 90) / (1.5 * epoch)))))
PY
)
echo "pretraining $EPOCHS epochs within $((SECONDS_GIVEN - 90)) s"
timeout --kill-after=20 $((SECONDS_GIVEN - 90)) "$PYTHON" pretrain.py --from_scratch \
    --vocab .device/vocab.txt --num_layers 12 --hidden_size 768 --epochs "$EPOCHS" --lr 2e-4 \
    --precision bf16 --device cuda --output_dir "$WORK/mlm12" --corpus "$C/usual_train.txt" \
    "$C/virus_train.txt" "$C/usual_eval_labeled.txt" "$C/virus_eval_labeled.txt" \
    > "$OUT_DIR/bert_base_pretrain.log" 2>&1 || echo "pretraining stopped (exit $?): best/ is its best epoch"
tail -n 3 "$OUT_DIR/bert_base_pretrain.log"
"$PYTHON" train.py --model_name "$WORK/mlm12/best" --lr 5e-5 --epochs 3 --warmup_epochs 0.5 \
    --precision bf16 --device cuda --train_file "$C/usual_train.txt" \
    --eval_file "$C/usual_eval_labeled.txt" --output_dir "$WORK/wb12" \
    > "$OUT_DIR/bert_base_train.log" 2>&1
tail -n 2 "$OUT_DIR/bert_base_train.log"
"$PYTHON" test.py --model_dir "$WORK/wb12/best" --device cuda \
    --data_file "$C/usual_test_labeled.txt" --output_dir "$WORK/test12" \
    > "$OUT_DIR/bert_base_test.log" 2>&1
grep -E "accuracy|macro-F1" "$OUT_DIR/bert_base_test.log" | head -n 4
