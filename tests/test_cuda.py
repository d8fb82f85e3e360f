"""The CUDA paths, where a GPU is: `python -m pytest -m cuda` (bench/gpu_check.sh runs them).
Everywhere else they are skipped. Tiny models on the fixture, as in the CPU suite."""
import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import run_script, tiny_train_args
from ewect.cleaning import clean_text
from ewect.config import LABEL2ID
from ewect.data import Collator, encode, read_records
from ewect.modeling import build_model
from ewect.prediction import load_predictor
from ewect.training import make_grad_scaler, make_optimizer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]
CUDA = torch.device("cuda", 0)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def cuda_args(clean_dir, vocab, out, *extra):
    return tiny_train_args(clean_dir, vocab, out, "--device", "cuda", *extra)


@pytest.fixture
def model_and_batch(vocab, clean_dir):
    torch.manual_seed(0)
    model, tokenizer = build_model(None, from_scratch=True, vocab=vocab, num_layers=2,
                                   hidden_size=32)
    records = read_records(str(clean_dir / "usual_train.txt"))[:16]
    ids = encode(tokenizer, [clean_text(r.content) for r in records], 140)
    labels = [LABEL2ID[r.label] for r in records]
    batch = Collator(ids, labels, tokenizer.pad_token_id)(list(range(len(ids))))
    return model.to(CUDA).train(), {k: v.to(CUDA) for k, v in batch.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_training_step_lowers_the_loss_without_a_host_sync(model_and_batch, precision):
    model, batch = model_and_batch
    optimizer = make_optimizer(model, 1e-3, 0.01)
    scaler = make_grad_scaler(precision, CUDA)
    step = lambda: train.train_step(model, [batch], 16, optimizer, scaler, precision, 1.0)  # noqa: E731
    first = step()[0].item() / 16
    for _ in range(3):  # warm-up: kernels load, the scaler settles
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            loss_sum, confusion, skipped = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss_sum.item() / 16 < first and not skipped.item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_non_finite_loss_skips_the_step(model_and_batch, monkeypatch, precision):
    model, batch = model_and_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(train, "classification_loss",
                        lambda logits, labels, weights=None: logits.float().sum() * float("nan"))
    optimizer = make_optimizer(model, 1e-3, 0.01)
    skipped = train.train_step(model, [batch], 16, optimizer, make_grad_scaler(precision, CUDA),
                               precision, 1.0)[2]
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
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--resume", "--precision", "fp16",
                         "--stop_after_steps", 4))
    state = torch.load(tmp_path / "last" / "training_state.pt", weights_only=True)
    assert state["scaler"]["scale"] >= 2.0 ** 15  # a bf16 run left no scaler to disable it
    train.main(tiny_train_args(clean_dir, vocab, tmp_path, "--resume", "--device", "cpu"))
    assert (tmp_path / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_competition_options_train_under_autocast(clean_dir, vocab, tmp_path, precision):
    # FGM normalises a gradient that fp16 loss scaling has scaled; R-Drop doubles the batch.
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--precision", precision, "--epochs", 1,
                         "--adversarial", "fgm", "--rdrop", 1, "--class_weights", "auto",
                         "--tune_bias"))
    assert (tmp_path / "best" / "decision.json").is_file()
    log = (tmp_path / "train.log").read_text()
    assert "not finite" not in log and "decision offsets (" in log


def test_compile(clean_dir, vocab, tmp_path):
    train.main(cuda_args(clean_dir, vocab, tmp_path, "--compile", "--epochs", 1))
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_predictions_on_cuda_match_the_cpu(trained, clean_dir):
    texts = [clean_text(r.content) for r in read_records(str(clean_dir / "usual_test_labeled.txt"))]
    on_cpu = load_predictor(trained / "best", device="cpu", precision="fp32").predict(texts)
    on_gpu = load_predictor(trained / "best", device="cuda").predict(texts)  # bf16 or fp16
    assert abs(on_cpu - on_gpu).max() < 2e-2
    assert (on_cpu.argmax(1) == on_gpu.argmax(1)).mean() >= 0.95


def test_torchrun_with_nccl(clean_dir, vocab, tmp_path):
    processes = min(2, torch.cuda.device_count())
    result = run_script("-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={processes}", "train.py",
                        *cuda_args(clean_dir, vocab, tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{processes} process(es)" in result.stdout


def test_masked_lm_pretraining_on_cuda(clean_dir, vocab, tmp_path):
    from test_pretrain import tiny_pretrain_args

    result = run_script("pretrain.py", *tiny_pretrain_args(clean_dir, vocab, tmp_path, "--device",
                                                           "cuda", "--epochs", 1))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "best" / "model.safetensors").is_file()
