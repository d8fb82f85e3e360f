#!/usr/bin/env bash
# The GPU check: every CUDA path tested and timed in one command, under 9 minutes on one H100.
#
#   bash bench/gpu_check.sh --prepare    # here, once: data/raw, a vocabulary, the wheels the
#                                        # GPU lacks (GPU_CHECK_VOCAB=FILE: that vocab.txt)
#   bash bench/gpu_check.sh              # on the GPU machine (the call below)
#   bash bench/gpu_check.sh --dry-run    # here: the same stages on the CPU, tiny model, fixture
#   bash bench/gpu_check.sh [--dry-run] cuda_tests epoch    # only the stages named
#
# On a GPU machine with no network and no data, what --prepare put in the ignored folders
# .device/ and .whl/ (opencc and jieba) travels with the repo, and the call is:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && bash bench/gpu_check.sh
# (with a time limit of at least 560 s: the stage budgets below add up to 550 s)
#
# Stages, each timed, each under its own time limit, each run even when an earlier one fails.
# A stage passes only when its command exits 0 AND its log shows that it did its work (the
# PROOF pattern): a stage that skipped is not a pass.
#   environment    torch, CUDA and the GPU's name; on the GPU, CUDA must be available
#   cuda_tests     python -m pytest -m cuda --fail-on-skip (tests/test_cuda.py): bf16/fp16 steps,
#                  no host sync, skipped non-finite steps, CUDA graphs against eager steps (a
#                  graph per mode of the model), exact resume, GPU->CPU resume, --compile, CUDA vs CPU predictions,
#                  torchrun (NCCL with two GPUs or more; with one, two processes share it over
#                  gloo), masked-LM pretraining. Fails unless a test ran and none skipped. The
#                  dry run runs them on the CPU (bf16 only; CUDA graphs need a GPU; --compile
#                  and torchrun left out: inductor takes 80 s on a CPU, and
#                  tests/test_distributed.py runs torchrun on the CPU already).
#   train_speed    python -m bench.train_speed --epoch_time: bert-base shape, bf16, train.py's step
#                  eagerly and replayed from CUDA graphs, against the published style (padded
#                  to 140, fp16, a sync and scikit-learn every step)
#   predict_speed  python -m bench.predict_speed over usual_test
#   epoch          one epoch of train.py on the real usual_train, bert-base shape (wall time)
#   epoch_graphs   the same with --cuda_graphs (the dry run: without, CUDA graphs being a GPU's);
#                  passes only if its log counts replayed steps
#   graphs_match   the two epochs' eval loss and macro-F1 within 0.02 of each other: replays
#                  launch the eager step's kernels with the same dropout draws, so the two runs
#                  differ by rounding alone (a bound chosen before any GPU run, not measured)
#   test           test.py on usual_test with the epoch stage's checkpoint (wall time)
#   bulk_predict   inference.py --output with that checkpoint over 100,000 posts (usual_test 20
#                  times; the dry run: 2,000), bf16: the whole command's time and, as inference.py
#                  reports it, posts/s once the model is loaded (100,000: at the last measured
#                  3,546 posts/s, 200,000 would not fit the stage's 60 s)
# Logs and gpu_check.json (per stage: status, device, seconds, last lines; rewritten as each
# stage ends)
# go to $OUT when it is set, else to workspace/gpu_check. The summary is printed last; the exit
# status is 1 when any stage failed or ran out of time.
set -u
cd "$(dirname "$0")/.."
MODE=gpu
case ${1:-} in --prepare|--dry-run) MODE=$1; shift ;; esac
ONLY=" $* "  # stage names given after the mode: run only those (say, to rerun a failed one)
needs() {  # needs A B: a rerun of stage A runs stage B too, whose output A reads
    case $ONLY in *" $1 "*) case $ONLY in *" $2 "*) ;; *) ONLY="$ONLY$2 " ;; esac ;; esac
}
needs test epoch  # test.py tests the checkpoint that the epoch stage trains
needs bulk_predict epoch
needs graphs_match epoch
needs graphs_match epoch_graphs
PYTHON=$(command -v python3 || command -v python)  # the GPU image has only python3

# vocab_file RAW_DIR OUT: GPU_CHECK_VOCAB (say, bert-base-chinese's vocab.txt) when it is set,
# else a vocabulary built from RAW_DIR's usual_train posts, as train.py --from_scratch builds one.
vocab_file() {
    if [ -n "${GPU_CHECK_VOCAB:-}" ]; then cp "$GPU_CHECK_VOCAB" "$2"; return; fi
    "$PYTHON" -c 'import sys; from ewect.mlm import read_corpus; from ewect.vocab import build_vocab
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(build_vocab(read_corpus(
    [sys.argv[1] + "/usual_train.txt"], log=lambda line: None))) + "\n")' "$1" "$2"
}

if [ "$MODE" = "--prepare" ]; then
    set -e
    mkdir -p .device/raw .whl
    cp "${EWECT_RAW_DIR:-data/raw}"/*.txt .device/raw/
    vocab_file .device/raw .device/vocab.txt
    # opencc and jieba are not on the GPU machine's image (Python 3.12 there); everything else
    # is. jieba ships only a source archive, so its wheel is built here (pure Python).
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl opencc
    "$PYTHON" -m pip wheel -q --no-deps -w .whl jieba
    echo "prepared .device/ and .whl/: $(du -sh .device .whl | tr '\n' ' ')"
    exit 0
fi

OUT_DIR=${OUT:-workspace/gpu_check}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
[ "$ONLY" = "  " ] && rm -f "$OUT_DIR/gpu_check.json"  # stages named: the others' results stay
if [ "$MODE" = "--dry-run" ]; then
    DEVICE=cpu
    # tests/test_cuda.py runs on the CPU, but for CUDA graphs (a GPU's alone), --compile
    # (inductor on a CPU: 80 s) and torchrun (tests/test_distributed.py runs two CPU processes
    # already): CI's time
    export EWECT_CUDA_TESTS_DEVICE=${EWECT_CUDA_TESTS_DEVICE:-cpu}
    CUDA_TESTS="--deselect tests/test_cuda.py::test_compile
        --deselect tests/test_cuda.py::test_cuda_graphs_train_as_eager_steps_do
        --deselect tests/test_cuda.py::test_cuda_graphs_are_captured_anew_in_the_other_mode
        --deselect tests/test_cuda.py::test_resume_with_cuda_graphs_is_exact
        --deselect tests/test_cuda.py::test_a_failed_capture_is_one_error_and_leaves_cuda_usable
        --deselect tests/test_cuda.py::test_torchrun_with_two_processes"
    RAW=tests/fixtures/raw
    VOCAB=$WORK/vocab.txt
    vocab_file $RAW "$VOCAB"
    SIZE="--num_layers 1 --hidden_size 32"
    TRAIN_SPEED="--steps 2 --warmup_steps 1 --batch_size 8"
    PREDICT_SPEED="--limit 40 --batch_size 8"
    EPOCH="--batch_size 8 --lr 1e-3"
    GRAPHS=""
    GRAPHS_PROOF="done: best eval macro-F1"
    BULK_POSTS=2000
    HAS_CUDA="cuda (True|False)"
    TRAIN_PROOF="speed-up \\(a\\)/\\(b\\)"
else
    DEVICE=cuda
    export EWECT_CUDA_TESTS_DEVICE=cuda:0  # never a value left in the environment: the CPU's
    CUDA_TESTS=""
    RAW=.device/raw
    VOCAB=.device/vocab.txt
    SIZE="--num_layers 12 --hidden_size 768"
    TRAIN_SPEED="--steps 200 --warmup_steps 20 --epoch_time"
    PREDICT_SPEED=""
    EPOCH=""
    GRAPHS="--cuda_graphs"
    GRAPHS_PROOF="CUDA graphs: [0-9]+ captured, [1-9][0-9]* steps replayed"
    BULK_POSTS=100000
    HAS_CUDA="cuda True"
    TRAIN_PROOF="s per epoch of usual_train"  # --epoch_time ran to its end
fi
STAGES=()

run_stage() {  # run_stage NAME BUDGET_SECONDS PROOF COMMAND...: run, time, judge, record
    local name=$1 budget=$2 proof=$3 start code status
    shift 3
    if [ "$ONLY" != "  " ] && [[ $ONLY != *" $name "* ]]; then return; fi
    echo "== $name (at most ${budget} s): $*"
    start=$(date +%s%N)
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$budget" "$@" > "$OUT_DIR/$name.log" 2>&1
    code=$?
    elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
    if { [ $code = 124 ] || [ $code = 137 ]; } && [ $elapsed -ge $(( budget * 1000 )) ]; then
        status="timed out after ${budget} s"
    elif [ $code = 137 ]; then
        status="killed (exit 137: out of memory?)"
    elif [ $code != 0 ]; then
        status="failed (exit $code)"
    elif ! grep -Eq -- "$proof" "$OUT_DIR/$name.log"; then
        status="failed (exit 0, but no '$proof' in its log)"
    else
        status=ok
    fi
    STAGES+=("$name|$status|$elapsed")
    tail -n 4 "$OUT_DIR/$name.log"
    "$PYTHON" - "$OUT_DIR" "$DEVICE" "${STAGES[@]}" <<'PY'
import json, os, sys

# name|status|milliseconds, where a status may quote a proof pattern with a '|' in it
out, device = sys.argv[1:3]
stages = [(s.split("|", 1)[0], *s.split("|", 1)[1].rsplit("|", 1)) for s in sys.argv[3:]]
path = os.path.join(out, "gpu_check.json")
summary = json.load(open(path)) if os.path.isfile(path) else {}  # earlier stages of a rerun
# the device says which run a stage's result came from: the GPU's, or the dry run's on the CPU
summary |= {name: {"status": status, "device": device,
                  "seconds": round(int(milliseconds) / 1000, 1),
                  "last_lines": open(os.path.join(out, f"{name}.log"), errors="replace")
                  .read().splitlines()[-6:]}
           for name, status, milliseconds in stages}
with open(path, "w") as f:
    json.dump(summary, f, indent=2, ensure_ascii=False)
PY
}

run_stage environment 20 "$HAS_CUDA" "$PYTHON" -c "import torch, transformers; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', \
transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
run_stage cuda_tests 150 " passed" "$PYTHON" -m pytest -q -m cuda --fail-on-skip \
    tests/test_cuda.py $CUDA_TESTS
run_stage train_speed 130 "$TRAIN_PROOF" "$PYTHON" -m bench.train_speed \
    --device $DEVICE --data_dir $RAW --vocab "$VOCAB" $SIZE $TRAIN_SPEED
run_stage predict_speed 30 "speed-up" "$PYTHON" -m bench.predict_speed --device $DEVICE \
    --data_dir $RAW --vocab "$VOCAB" $SIZE $PREDICT_SPEED
"$PYTHON" clean_data.py --raw_dir $RAW --out_dir "$WORK/clean" > "$OUT_DIR/clean.log" 2>&1
EPOCH_OF_TRAIN_PY=("$PYTHON" train.py --from_scratch --vocab "$VOCAB" $SIZE --epochs 1 \
    --device $DEVICE --train_file "$WORK/clean/usual_train.txt" \
    --eval_file "$WORK/clean/usual_eval_labeled.txt" $EPOCH)
run_stage epoch 60 "done: best eval macro-F1" "${EPOCH_OF_TRAIN_PY[@]}" --output_dir "$WORK/epoch"
run_stage epoch_graphs 60 "$GRAPHS_PROOF" "${EPOCH_OF_TRAIN_PY[@]}" \
    --output_dir "$WORK/epoch_graphs" $GRAPHS
run_stage graphs_match 10 "within 0.02" "$PYTHON" -c 'import json, sys
eager, graphed = (json.load(open(f"{run}/best/eval_results.json")) for run in sys.argv[1:])
print(*(f"{name}: eager {eager[name]:.4f}, graphed {graphed[name]:.4f}"
        for name in ("eval_loss", "eval_macro_f1")), sep="\n")
if max(abs(eager[n] - graphed[n]) for n in ("eval_loss", "eval_macro_f1")) > 0.02:
    sys.exit("the graphed epoch ended more than 0.02 away from the eager one")
print("the graphed epoch ended within 0.02 of the eager one")' "$WORK/epoch" "$WORK/epoch_graphs"
run_stage test 30 "macro-F1" "$PYTHON" test.py --model_dir "$WORK/epoch/best" --device $DEVICE \
    --data_file "$WORK/clean/usual_test_labeled.txt" --output_dir "$WORK/test"
"$PYTHON" -c 'import sys, itertools; from ewect.data import read_records
posts = [" ".join(r.content.split()) for r in read_records(sys.argv[1]) if r.content.strip()]
open(sys.argv[2], "w", encoding="utf-8").writelines(
    p + "\n" for p in itertools.islice(itertools.cycle(posts), int(sys.argv[3])))' \
    "$RAW/usual_test_labeled.txt" "$WORK/bulk.txt" $BULK_POSTS
run_stage bulk_predict 60 "posts/s" "$PYTHON" inference.py --model_dir "$WORK/epoch/best" \
    --input_file "$WORK/bulk.txt" --output "$WORK/bulk.tsv" --device $DEVICE

if [ ${#STAGES[@]} = 0 ]; then
    echo "error: no stage named${ONLY% }; the stages: environment cuda_tests train_speed" \
        "predict_speed epoch epoch_graphs graphs_match test bulk_predict" >&2
    exit 2
fi
echo
echo "device: $DEVICE"
echo "| stage | status | seconds |"
echo "| --- | --- | ---: |"
failed=0
for stage in "${STAGES[@]}"; do
    name=${stage%%|*} milliseconds=${stage##*|} status=${stage#*|}
    status=${status%|*}
    echo "| $name | $status | $(awk "BEGIN {printf \"%.1f\", $milliseconds / 1000}") |"
    [ "$status" = ok ] || failed=1
done
exit $failed
