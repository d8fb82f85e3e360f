#!/usr/bin/env bash
# The GPU check: every CUDA path tested and timed in one command, under 8 minutes on one H100.
#
#   bash bench/gpu_check.sh --prepare    # here, once: data, vocab and the wheels the GPU lacks
#   bash bench/gpu_check.sh              # on the GPU machine (the device tool's call below)
#   bash bench/gpu_check.sh --dry-run    # here: the same stages on the CPU, tiny model, fixture
#
# The device tool's call (the GPU machine has no network and no ../shared; what --prepare put in
# the ignored folders .device/ and .whl/ travels with `carry`):
#   command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
#            --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#            bash bench/gpu_check.sh
#   carry: [".device", ".whl"]      timeout_s: 560
#
# Stages, each timed, each run even when an earlier one fails:
#   cuda_tests     python -m pytest -m cuda (tests/test_cuda.py): bf16/fp16 steps, no host sync,
#                  skipped non-finite steps, exact resume, GPU->CPU resume, --compile, CUDA vs
#                  CPU predictions, torchrun with NCCL, masked-LM pretraining
#   train_speed    bench/train_speed.py --epoch_time: bert-base shape, bf16, against the
#                  published style (padded to 140, fp16, a sync and scikit-learn every step)
#   predict_speed  bench/predict_speed.py over usual_test
#   epoch          one epoch of train.py on the real usual_train, bert-base shape (wall time)
#   test           test.py on usual_test with that checkpoint (wall time)
# Logs and gpu_check.json (per stage: status, seconds, last lines) go to $OUT when it is set
# (the device tool returns it), else to workspace/gpu_check. The summary is printed last.
set -u
cd "$(dirname "$0")/.."
MODE=${1:-gpu}

if [ "$MODE" = "--prepare" ]; then
    set -e
    mkdir -p .device/raw .whl
    cp ../shared/data/smp2020-ewect/raw/*.txt .device/raw/
    cp ../shared/models/bert-base-chinese-vocab/vocab.txt .device/
    # opencc is not on the GPU machine's image (Python 3.12 there); everything else is.
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl opencc
    echo "prepared .device/ and .whl/: $(du -sh .device .whl | tr '\n' ' ')"
    exit 0
fi

OUT_DIR=${OUT:-workspace/gpu_check}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
if [ "$MODE" = "--dry-run" ]; then
    DEVICE=cpu
    RAW=tests/fixtures/raw
    VOCAB=${GPU_CHECK_VOCAB:-../shared/models/bert-base-chinese-vocab/vocab.txt}
    SIZE="--num_layers 1 --hidden_size 32"
    TRAIN_SPEED="--steps 2 --warmup_steps 1 --batch_size 8"
    PREDICT_SPEED="--limit 40 --batch_size 8"
    EPOCH="--batch_size 8 --lr 1e-3"
else
    DEVICE=cuda
    RAW=.device/raw
    VOCAB=.device/vocab.txt
    SIZE="--num_layers 12 --hidden_size 768"
    TRAIN_SPEED="--steps 200 --warmup_steps 20 --epoch_time"
    PREDICT_SPEED=""
    EPOCH=""
fi
STAGES=()

run_stage() {  # run_stage NAME COMMAND...: time it, keep its log, go on whatever happens
    local name=$1 start status
    shift
    echo "== $name: $*"
    start=$(date +%s%N)
    PYTHONUNBUFFERED=1 "$@" > "$OUT_DIR/$name.log" 2>&1
    status=$?
    STAGES+=("$name $status $(( ($(date +%s%N) - start) / 1000000 ))")
    tail -n 4 "$OUT_DIR/$name.log"
}

run_stage environment python -c "import torch, transformers; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
run_stage cuda_tests python -m pytest -q -m cuda tests/test_cuda.py
run_stage train_speed python bench/train_speed.py --device $DEVICE --data_dir $RAW \
    --vocab "$VOCAB" $SIZE $TRAIN_SPEED
run_stage predict_speed python bench/predict_speed.py --device $DEVICE --data_dir $RAW \
    --vocab "$VOCAB" $SIZE $PREDICT_SPEED
python clean_data.py --raw_dir $RAW --out_dir "$WORK/clean" > "$OUT_DIR/clean.log" 2>&1
run_stage epoch python train.py --from_scratch --vocab "$VOCAB" $SIZE --epochs 1 \
    --device $DEVICE --train_file "$WORK/clean/usual_train.txt" \
    --eval_file "$WORK/clean/usual_eval_labeled.txt" --output_dir "$WORK/wb" $EPOCH
run_stage test python test.py --model_dir "$WORK/wb/best" --device $DEVICE \
    --data_file "$WORK/clean/usual_test_labeled.txt" --output_dir "$WORK/test"

python - "$OUT_DIR" "${STAGES[@]}" <<'EOF'
import json, os, sys

out, stages = sys.argv[1], [s.split() for s in sys.argv[2:]]
summary = {name: {"status": "ok" if status == "0" else f"failed ({status})",
                  "seconds": round(int(milliseconds) / 1000, 1),
                  "last_lines": open(os.path.join(out, f"{name}.log"), errors="replace")
                  .read().splitlines()[-6:]}
           for name, status, milliseconds in stages}
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
print("\n| stage | status | seconds |\n| --- | --- | ---: |")
for name, result in summary.items():
    print(f"| {name} | {result['status']} | {result['seconds']} |")
EOF
