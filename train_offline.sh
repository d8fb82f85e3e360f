#!/bin/sh
# A working model from the six raw files alone, offline: no hub, nothing from outside the repo.
# Cleans the data (if not done), pretrains a small BERT with masked-LM on the train and eval posts
# (pretrain.py --from_scratch: a vocabulary built from them), fine-tunes it on usual_train
# (train.py), tests it on usual_test (test.py), and prints the scores and where the model is.
#
#   sh train_offline.sh                    # 2 layers, hidden 128: about 11 minutes on 2 CPU cores
#   sh train_offline.sh --best             # 4 layers, hidden 256, pretrained 15 epochs, fine-tuned
#                                          # 5 (usual_test 0.6949 with bert-base-chinese's vocab,
#                                          # in RESULTS): hours on a CPU
#   OUT=workspace/offline_fgm sh train_offline.sh --adversarial fgm   # the rest goes to train.py
#   OUT=workspace/mine LAYERS=4 PRETRAIN_EPOCHS=10 sh train_offline.sh   # the settings below
#
# A step whose output is complete is skipped, and a stopped pretraining or fine-tuning resumes:
# after an interruption, run the same command again. Settings (environment variables):
#   LAYERS, HIDDEN                  the BERT's size (2, 128; --best: 4, 256)
#   PRETRAIN_EPOCHS, PRETRAIN_LR    masked-LM pretraining (6, 1e-3; --best: 15, 1e-3)
#   FINETUNE_EPOCHS, FINETUNE_LR    fine-tuning (4, 5e-4; --best: 5, 2e-4)
#   PRECISION                       pretraining's autocast (bf16 on CPUs that have it, else auto)
#   OUT                             the runs: OUT/mlm, OUT/wb, OUT/wb/test (workspace/offline,
#                                   --best: workspace/offline_best); one folder, one recipe
#   EWECT_RAW_DIR, CLEAN_DIR        the raw files (data/raw) and the cleaned ones (data/clean)

set -e
REPO=$(cd "$(dirname "$0")" && pwd)
case $1 in
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --best) RECIPE=best; shift ;;
esac
if [ "$RECIPE" = best ]; then
    : "${LAYERS:=4}" "${HIDDEN:=256}" "${PRETRAIN_EPOCHS:=15}" "${FINETUNE_EPOCHS:=5}"
    : "${FINETUNE_LR:=2e-4}"
fi
: "${LAYERS:=2}" "${HIDDEN:=128}" "${PRETRAIN_EPOCHS:=6}" "${PRETRAIN_LR:=1e-3}"
: "${FINETUNE_EPOCHS:=4}" "${FINETUNE_LR:=5e-4}"
: "${OUT:=$REPO/workspace/offline${RECIPE:+_$RECIPE}}" "${CLEAN_DIR:=$REPO/data/clean}"
RAW=${EWECT_RAW_DIR:-$REPO/data/raw}
if [ -z "$PRECISION" ]; then  # bf16 is a quarter faster where the CPU computes it natively
    PRECISION=auto
    if ! nvidia-smi -L >/dev/null 2>&1 && grep -qsw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo
    then PRECISION=bf16; fi
fi

say() { echo "== $*"; }

# train.py's arguments are checked now, not after the pretraining they would wait for
python - "$REPO" "$@" <<'PY' || { [ $? = 3 ] && exit 0; exit 2; }
import sys
sys.path.insert(0, sys.argv[1])
sys.argv[0] = "train.py"  # argparse's name for it in the usage and error lines
import train
try:
    train.parse_args(sys.argv[2:])
except SystemExit as stop:  # argparse's error (status 2), or its --help, shown (status 0)
    sys.exit(3 if stop.code == 0 else 2)
PY

# Finished steps are skipped, so OUT must not hold a run of another recipe: its scores would be
# printed as this one's.
SETTINGS="layers $LAYERS, hidden $HIDDEN, pretraining $PRETRAIN_EPOCHS epochs at $PRETRAIN_LR, \
fine-tuning $FINETUNE_EPOCHS epochs at $FINETUNE_LR"
mkdir -p "$OUT"
if [ -f "$OUT/settings" ] && [ "$(cat "$OUT/settings")" != "$SETTINGS" ]; then
    echo "error: $OUT holds a run of other settings ($(cat "$OUT/settings")); set OUT to" \
        "another folder, or delete $OUT to start over" >&2
    exit 2
fi
echo "$SETTINGS" > "$OUT/settings"

# step NAME FOLDER WHAT COMMAND...: a pretrain.py or train.py run into FOLDER, skipped when its
# log says it is done (by this same command: FOLDER/command), resumed when it left a last/ to
# continue from, else started afresh.
step() {
    name=$1 folder=$2 what=$3
    shift 3
    if grep -qs "INFO done: " "$folder/train.log"; then
        if [ -f "$folder/command" ] && [ "$(cat "$folder/command")" != "$*" ]; then
            echo "error: $folder was made by another command ($(cat "$folder/command")); set" \
                "OUT to another folder, or delete $folder to redo it" >&2
            exit 2
        fi
        say "$name: done before, skipped ($folder)"
        return
    fi
    if [ -f "$folder/last/training_state.pt" ]; then
        say "$name: resuming $folder"
        "$@" --output_dir "$folder" --resume
    else
        say "$name: $what, into $folder"
        "$@" --output_dir "$folder" --overwrite_output_dir  # nothing there to resume
    fi
    if ! grep -qs "INFO done: " "$folder/train.log"; then
        echo "error: $name stopped before its end; run the same command again to continue" >&2
        exit 1
    fi
    echo "$*" > "$folder/command"
}

MISSING=
for NAME in usual_train.txt virus_train.txt usual_eval_labeled.txt virus_eval_labeled.txt \
        usual_test_labeled.txt; do
    [ -f "$CLEAN_DIR/$NAME" ] || MISSING=$NAME
done
if [ -n "$MISSING" ]; then
    say "cleaning: $RAW into $CLEAN_DIR"
    python "$REPO/clean_data.py" --raw_dir "$RAW" --out_dir "$CLEAN_DIR"
else
    say "cleaning: $CLEAN_DIR has the cleaned files, skipped"
fi

WHAT="a BERT of $LAYERS layers, hidden $HIDDEN, on a vocabulary built from the posts,"
step pretraining "$OUT/mlm" "$WHAT $PRETRAIN_EPOCHS epochs at lr $PRETRAIN_LR ($PRECISION)" \
    python "$REPO/pretrain.py" --from_scratch --num_layers "$LAYERS" --hidden_size "$HIDDEN" \
    --epochs "$PRETRAIN_EPOCHS" --lr "$PRETRAIN_LR" --precision "$PRECISION" \
    --corpus "$CLEAN_DIR/usual_train.txt" "$CLEAN_DIR/virus_train.txt" \
    "$CLEAN_DIR/usual_eval_labeled.txt" "$CLEAN_DIR/virus_eval_labeled.txt"

WHAT="$OUT/mlm/best on usual_train, $FINETUNE_EPOCHS epochs at lr $FINETUNE_LR"
step fine-tuning "$OUT/wb" "$WHAT" python "$REPO/train.py" --model_name "$OUT/mlm/best" \
    --lr "$FINETUNE_LR" --epochs "$FINETUNE_EPOCHS" --train_file "$CLEAN_DIR/usual_train.txt" \
    --eval_file "$CLEAN_DIR/usual_eval_labeled.txt" "$@"

METRICS=$OUT/wb/test/usual_test_labeled.metrics.json  # test.py's folder for OUT/wb/best
if [ "$METRICS" -nt "$OUT/wb/best/model.safetensors" ]; then
    say "testing: done before, skipped ($METRICS)"
else
    say "testing: $OUT/wb/best on usual_test, into $OUT/wb/test"
    python "$REPO/test.py" --model_dir "$OUT/wb/best" --data_file \
        "$CLEAN_DIR/usual_test_labeled.txt" --output_dir "$OUT/wb/test"
fi
python -c 'import json, sys; m = json.load(open(sys.argv[1]))
print("usual_test: accuracy %.4f, macro-F1 %.4f, official macro-F1 %.4f"
      % (m["accuracy"], m["macro_f1"], m["official_macro_f1"]))' "$METRICS"
echo "model: $OUT/wb/best (python inference.py --model_dir $OUT/wb/best --input '...')"
