"""The CUDA paths, where a GPU is: `python -m pytest -m cuda` (bench/gpu_check.sh runs them, with
--fail-on-skip: there a skipped test fails the check). Elsewhere they are skipped, except in the
GPU check's dry run, which sets EWECT_CUDA_TESTS_DEVICE=cpu and runs them on the CPU (bf16 only,
no sync check) so that their code is proven before a GPU's rare minutes are spent on it. Tiny
models on the fixture, as in the CPU suite."""
import contextlib
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ewect.loss
import train
from conftest import run_script, tiny_train_args
from ewect.cleaning import clean_text
from ewect.config import LABEL2ID
from ewect.data import Collator, encode, read_records
from ewect.loss import make_loss
from ewect.modeling import build_model, forward_mask
from ewect.prediction import load_predictor
from ewect.training import CaptureFailed, CudaGraphSteps, make_grad_scaler, make_optimizer

DEVICE = torch.device(os.environ.get("EWECT_CUDA_TESTS_DEVICE", "cuda:0"))
ON_GPU = DEVICE.type == "cuda"
PRECISIONS = ["bf16", "fp16"] if ON_GPU else ["bf16"]  # fp16 autocast is a GPU path
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                                 reason="no CUDA GPU here")]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def cuda_args(clean_dir, vocab, out, *extra):
    return tiny_train_args(clean_dir, vocab, out, "--device", DEVICE.type, *extra)


@contextlib.contextmanager
def no_host_sync():
    """On the GPU, any host sync inside raises (nothing waits for the GPU between log steps)."""
    if not ON_GPU:
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def model_and_batch(vocab, clean_dir):
    torch.manual_seed(0)
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=2,
                                   hidden_size=32)
    records = read_records(str(clean_dir / "usual_train.txt"))[:16]
    ids = encode(tokenizer, [clean_text(r.content) for r in records], 140)
    labels = [LABEL2ID[r.label] for r in records]
    batch = Collator(ids, labels, tokenizer.pad_token_id)(list(range(len(ids))))
    return model.to(DEVICE).train(), {k: v.to(DEVICE) for k, v in batch.items()}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_training_step_lowers_the_loss_without_a_host_sync(model_and_batch, precision):
    model, batch = model_and_batch
    optimizer = make_optimizer(model, 1e-3, 0.01)
    scaler = make_grad_scaler(precision, DEVICE)
    loss = make_loss(precision)
    step = lambda: train.train_step(model, [batch], 16, loss, optimizer, scaler, 1.0)  # noqa: E731
    first = step()[0].item() / 16
    for _ in range(3):  # warm-up: kernels load, the scaler settles
        step()
    with no_host_sync():
        for _ in range(5):
            loss_sum, confusion, skipped = step()
    assert loss_sum.item() / 16 < first and not skipped.item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_non_finite_loss_skips_the_step(model_and_batch, monkeypatch, precision):
    model, batch = model_and_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(ewect.loss, "classification_loss",
                        lambda logits, labels, weights=None: logits.float().sum() * float("nan"))
    optimizer = make_optimizer(model, 1e-3, 0.01)
    skipped = train.train_step(model, [batch], 16, make_loss(precision), optimizer,
                               make_grad_scaler(precision, DEVICE), 1.0)[2]
    assert skipped.item()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_on_cuda_is_exact(clean_dir, vocab, tmp_path):
    train.main(cuda_args(clean_dir, vocab, tmp_path / "whole"))
    out = tmp_path / "resumed"
    train.main(cuda_args(clean_dir, vocab, out, "--stop_after_steps", 3))
    train.main(cuda_args(clean_dir, vocab, out, "--resume"))
    a, b = weights(out / "last"), weights(tmp_path / "whole" / "last")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_gpu_run_resumes_on_the_cpu_and_fp16_keeps_loss_scaling(clean_dir, vocab, tmp_path):
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--precision", "bf16",
                         "--stop_after_steps", 3))
    if ON_GPU:
        train.main(cuda_args(clean_dir, vocab, tmp_path, "--resume", "--precision", "fp16",
                             "--stop_after_steps", 4))
        state = torch.load(tmp_path / "last" / "training_state.pt", weights_only=True)
        assert state["scaler"]["scale"] >= 2.0 ** 15  # a bf16 run left no scaler to disable it
    train.main(tiny_train_args(clean_dir, vocab, tmp_path, "--resume", "--device", "cpu"))
    assert (tmp_path / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_competition_options_train_under_autocast(trained, clean_dir, vocab, tmp_path,
                                                      precision):
    # FGM normalises a gradient that fp16 loss scaling has scaled; R-Drop doubles the batch; the
    # teacher's soft labels meet autocast's logits.
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--precision", precision, "--epochs", 1,
                         "--adversarial", "fgm", "--rdrop", 1, "--class_weights", "auto",
                         "--tune_bias", "--teacher", trained / "best"))
    assert (tmp_path / "best" / "decision.json").is_file()
    log = (tmp_path / "train.log").read_text()
    assert "not finite" not in log and "decision offsets (" in log


def test_compile(clean_dir, vocab, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--compile", "--epochs", 1))
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert counters["stats"]["unique_graphs"] > 0  # compiled, not run eagerly after a break


def test_predictions_on_cuda_match_the_cpu(trained, clean_dir):
    texts = [clean_text(r.content) for r in read_records(str(clean_dir / "usual_test_labeled.txt"))]
    torch.backends.cuda.enable_cudnn_sdp(True)  # torch's default, which a GPU predictor turns off
    on_cpu = load_predictor(trained / "best", device="cpu", precision="fp32").predict(texts)
    # fp32 on both: the same numbers but for the order of float sums
    in_fp32 = load_predictor(trained / "best", device=DEVICE.type, precision="fp32").predict(texts)
    assert abs(on_cpu - in_fp32).max() < 1e-4  # with GPU batches padded to a multiple of 8
    # cuDNN's attention plans every new batch shape on the host: a GPU predictor turns it off
    assert torch.backends.cuda.cudnn_sdp_enabled() == (not ON_GPU)
    # the GPU's default (bf16 or fp16) rounds: the same label wherever the top two classes are
    # apart by more than that rounding (a tiny under-trained model has near ties)
    rounded = load_predictor(trained / "best", device=DEVICE.type).predict(texts)
    top_two = torch.from_numpy(on_cpu).topk(2, dim=1).values
    clear = (top_two[:, 0] - top_two[:, 1] > 0.02).numpy()
    assert abs(on_cpu - rounded).max() < 2e-2
    assert (on_cpu.argmax(1) == rounded.argmax(1))[clear].all()


def test_torchrun_with_two_processes(clean_dir, vocab, trained, tmp_path):
    # Two GPUs or more: NCCL, one GPU each. One GPU: the two processes share it over gloo, so
    # DDP's broadcast and gradient all-reduce, the step's all-reduces and all_gather_object run
    # on CUDA tensors, but not NCCL. On the CPU (the dry run): gloo on the CPU.
    nccl = ON_GPU and torch.cuda.device_count() >= 2
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *cuda_args(clean_dir, vocab, tmp_path, "--teacher",
                                               trained / "best"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 process(es)" in result.stdout
    assert "2 process(es) sharing them" in result.stdout  # the teacher's labels, gathered
    assert f"process group: {'nccl' if nccl else 'gloo'}" in result.stdout, result.stdout
    assert (tmp_path / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_masked_lm_pretraining_on_cuda(clean_dir, vocab, tmp_path, whole_word_mask):
    import pretrain
    from test_pretrain import tiny_pretrain_args

    pretrain.main(tiny_pretrain_args(clean_dir, vocab, tmp_path, "--device", DEVICE.type,
                                     *(["--whole_word_mask"] if whole_word_mask else [])))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("MLM/held_out_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    best = json.loads((tmp_path / "best" / "eval_results.json").read_text())
    assert best["whole_word_mask"] == whole_word_mask and best["held_out_loss"] == min(losses)


# CUDA graphs last: a capture that fails can leave the process's CUDA state unusable, which
# would fail the tests after it for no fault of theirs.


def test_cuda_graphs_train_as_eager_steps_do(model_and_batch):
    # Two batch shapes, each run eagerly, then captured, then replayed, in a mixed order; R-Drop,
    # class weights and a teacher's soft labels inside the graph. Replays launch the same kernels
    # with the same dropout draws, so losses and weights match the eager run's.
    model, batch = model_and_batch
    width = -(-batch["input_ids"].shape[1] // 8) * 8  # as train.py pads on a GPU
    batch = {name: F.pad(tensor, (0, width - tensor.shape[1])) if tensor.dim() == 2 else tensor
             for name, tensor in batch.items()}
    batch["teacher"] = torch.softmax(torch.randn(16, 6, device=DEVICE), -1)
    half = {name: tensor[:8] for name, tensor in batch.items()}
    order = [batch, half, batch, batch, half, half, batch]
    loss = make_loss("bf16", torch.linspace(0.5, 2.0, 6, device=DEVICE), rdrop=1.0, kd=(0.5, 2.0))

    def run(graphs):
        torch.manual_seed(1)
        trained = copy.deepcopy(model)
        optimizer = make_optimizer(trained, 1e-3, 0.01)
        losses = [(train.graphed_train_step(graphs, trained, [b], len(b["labels"]), loss,
                                            optimizer, 1.0) if graphs else
                   train.train_step(trained, [b], len(b["labels"]), loss, optimizer, None, 1.0)
                   )[0].clone() for b in order]
        return torch.stack(losses), trained.state_dict()

    cudnn_attention = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # the attention kernel train.py's runs use
    try:
        graphs = CudaGraphSteps()
        (eager_losses, eager), (graph_losses, graphed) = run(None), run(graphs)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    assert len(graphs.graphs) == 2  # both shapes captured, and replayed after
    assert torch.allclose(graph_losses, eager_losses, rtol=1e-5), (graph_losses, eager_losses)
    assert all(torch.allclose(graphed[k], eager[k], atol=1e-6) for k in eager)


def test_cuda_graphs_are_captured_anew_in_the_other_mode(model_and_batch):
    # A graph captured in eval mode records no dropout: replayed for a model in training mode,
    # it would train without dropout for the rest of the run.
    model, batch = model_and_batch
    mask = forward_mask(model, batch["attention_mask"])

    def logits(inputs):
        with torch.no_grad():
            return (model(input_ids=inputs["input_ids"], attention_mask=mask).logits,)

    cudnn_attention = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        graphs = CudaGraphSteps()
        runs = {}
        for training in (False, True):  # each: run eagerly, captured, replayed
            model.train(training)
            runs[training] = [graphs(logits, batch, model.training)[0].clone() for _ in range(3)]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    assert len(graphs.graphs) == 2 and graphs.replays == 4
    assert torch.equal(runs[False][1], runs[False][2])
    assert not torch.equal(runs[True][1], runs[True][2])  # new dropout draws at each replay


def test_resume_with_cuda_graphs_is_exact(clean_dir, vocab, tmp_path):
    # the resumed run runs eagerly steps that the whole run replayed, and the other way round
    train.main(cuda_args(clean_dir, vocab, tmp_path / "whole", "--cuda_graphs"))
    out = tmp_path / "resumed"
    train.main(cuda_args(clean_dir, vocab, out, "--stop_after_steps", 3, "--cuda_graphs"))
    train.main(cuda_args(clean_dir, vocab, out, "--resume", "--cuda_graphs"))
    a, b = weights(out / "last"), weights(tmp_path / "whole" / "last")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert "CUDA graphs" in (out / "train.log").read_text()


def test_a_failed_capture_is_one_error_and_leaves_cuda_usable(model_and_batch):
    # Last of all: it fails a capture on purpose. A host sync cannot be captured; the error names
    # that first failure (not the capture's end, which fails after it), and the process is back
    # on the default stream with CUDA usable, as train.py needs to save last/.
    _, batch = model_and_batch

    def syncing(inputs):
        return (inputs["input_ids"].float().sum() * inputs["input_ids"].sum().item(),)

    graphs = CudaGraphSteps()
    graphs(syncing, batch, True)  # run eagerly: the warm-up
    with pytest.raises(CaptureFailed, match="capturing a step failed") as failure:
        graphs(syncing, batch, True)
    # why: CUDA's "operation not permitted when stream is capturing", not the end's "failed due
    # to a previous error during capture"
    assert "capturing" in str(failure.value).split("(", 1)[1], failure.value
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert (torch.ones(3, device=DEVICE) * 2).sum().item() == 6
