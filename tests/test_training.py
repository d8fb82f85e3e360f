"""train.py as users run it: from pretrained folders in any dtype, with the recipe's schedule,
the best epoch kept, and the precision and device chosen right."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import BertTokenizer

import train
from conftest import from_folder_args, pretrained_folder, tiny_train_args
from ewect.errors import UserError
from ewect.modeling import bert_config, build_model, choose_precision
from ewect.training import make_optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fine_tunes_a_pretrained_folder_of_any_dtype_in_fp32(clean_dir, vocab, tmp_path,
                                                             monkeypatch, dtype):
    # Given as ~/..., as users type it.
    monkeypatch.setenv("HOME", str(tmp_path))
    pretrained_folder(tmp_path / "bert", vocab, dtype=dtype)
    out = tmp_path / "wb"
    train.main(from_folder_args(clean_dir, vocab, out, "~/bert", "--stop_after_steps", 4))
    before = load_file(str(tmp_path / "bert" / "model.safetensors"))
    after = load_file(str(out / "last" / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert after[name].dtype == torch.float32
    # lr-1e-5 updates are far below bf16's resolution: with bf16 weights nothing would change.
    assert (after[name] - before[name].float()).abs().max() > 0


def test_precision_auto_uses_bf16_only_where_the_gpu_has_it(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    # A T4 or V100: torch calls bf16 supported there, by emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert choose_precision("auto", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision("auto", cuda) == "bf16"
    assert choose_precision("auto", cpu) == "fp32"
    assert choose_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", cpu)


def test_a_gpu_run_turns_off_cudnn_attention(monkeypatch):
    # cuDNN's attention plans every new batch shape on the host: 5x slower prediction on an H200
    from ewect.modeling import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp",
                        lambda on: calls.append(on))  # the flag is global: leave it as it was
    calls = []
    resolve_device("cpu")
    assert calls == []
    assert resolve_device("cuda") == torch.device("cuda", 0) and calls == [False]


def test_bf16_autocast_trains_on_the_cpu(clean_dir, vocab, tmp_path):
    # With the options that add passes (FGM, R-Drop) too: they run under autocast as well.
    train.main(tiny_train_args(clean_dir, vocab, tmp_path, "--precision", "bf16", "--epochs", 1,
                               "--adversarial", "fgm", "--rdrop", 1))
    assert json.loads((tmp_path / "best" / "eval_results.json").read_text())["epoch"] == 1
    assert load_file(str(tmp_path / "best" / "model.safetensors"))[
        "classifier.weight"].dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_no_silent_cpu_marathon(clean_dir, vocab, tmp_path):
    args = tiny_train_args(clean_dir, vocab, tmp_path, "--num_layers", 6, "--device", "auto")
    with pytest.raises(UserError, match="no GPU found.*--device cpu"):
        train.main(args)
    assert not (tmp_path / "last").exists()


def test_learning_rate_warms_up_over_one_epoch_then_decays_to_zero(trained):
    # The fixture run: 6 steps an epoch, 2 epochs, lr 1e-3, logged every 2 steps.
    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    lrs = {e.step: e.value for e in events.Scalars("Train/lr")}
    # lr after step k: 1e-3 * k/6 up to one epoch, then down to 0 at the end of two.
    assert lrs == pytest.approx({2: 1e-3 / 3, 4: 2e-3 / 3, 6: 1e-3, 8: 2e-3 / 3, 10: 1e-3 / 3,
                                 12: 0.0}, abs=1e-9)


def test_best_epoch_is_kept_when_eval_f1_falls_and_patience_stops(clean_dir, vocab, tmp_path,
                                                                  monkeypatch):
    f1s, snapshots = iter([0.30, 0.50, 0.40, 0.45, 0.90]), []

    def scripted_evaluate(model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"macro_f1": next(f1s), "acc": 0.5, "loss": 1.0}

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    train.main(tiny_train_args(clean_dir, vocab, tmp_path, "--epochs", 5, "--patience", 2))
    assert len(snapshots) == 4  # epochs 3 and 4 brought no gain: stopped before the 0.90
    best = json.loads((tmp_path / "best" / "eval_results.json").read_text())
    assert best["epoch"] == 2 and best["eval_macro_f1"] == 0.50
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(saved[k], snapshots[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], snapshots[3][k]) for k in saved)


def test_weight_decay_spares_biases_and_layer_norms(vocab):
    model = build_model(None, from_scratch=True, vocab=vocab, num_layers=1, hidden_size=32)[0]
    optimizer = make_optimizer(model, 1e-3, 0.01)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups
                for p in group["params"]}
    for name, param in model.named_parameters():
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert decay_of[id(param)] == (0.0 if no_decay else 0.01), name


def test_dataloader_workers_change_nothing(clean_dir, vocab, tmp_path):
    for workers in (0, 2):
        train.main(tiny_train_args(clean_dir, vocab, tmp_path / str(workers), "--num_workers",
                                   workers, "--stop_after_steps", 3))
    a, b = (load_file(str(tmp_path / w / "last" / "model.safetensors")) for w in ("0", "2"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_the_whole_batch(clean_dir, vocab, tmp_path):
    # 8 posts a step, in micro-batches of at most 3 (3 + 3 + 2): the same steps, the same
    # gradients (dropout off, so only float rounding differs).
    for name, extra in (("whole", []), ("accumulated", ["--per_device_batch_size", 3])):
        train.main(tiny_train_args(clean_dir, vocab, tmp_path / name, "--dropout", 0,
                                   "--stop_after_steps", 4, *extra))
    a, b = (load_file(str(tmp_path / n / "last" / "model.safetensors"))
            for n in ("whole", "accumulated"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert "8 posts = 1 process(es) x 3 micro-batch(es) of up to 3" in (
        tmp_path / "accumulated" / "train.log").read_text()


def test_starts_from_a_classifier_with_another_number_of_labels(clean_dir, vocab, tmp_path):
    # A 2-class sentiment model is what users often have: its encoder is kept, its head is
    # replaced by a new six-way one, and the log says so.
    from transformers import BertForSequenceClassification

    folder = tmp_path / "sentiment"
    tokenizer = BertTokenizer(vocab)
    torch.manual_seed(0)
    two_way = BertForSequenceClassification(bert_config(
        len(tokenizer), 2, 32, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}))
    two_way.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "wb"
    train.main(from_folder_args(clean_dir, vocab, out, folder, "--stop_after_steps", 1))
    log = (out / "train.log").read_text()
    assert "a classifier of 2 labels (negative, positive), now 6: a new classification head" in log
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["id2label"]["0"] == "happy" and len(config["id2label"]) == 6
    before, after = (load_file(str(f / "model.safetensors")) for f in (folder, out / "last"))
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    assert (after[encoder] - before[encoder]).abs().max() < 1e-3  # one small step from it
    assert after["classifier.weight"].shape == (6, 32)


def test_gradient_checkpointing_trains_to_the_same_weights(clean_dir, vocab, tmp_path,
                                                           monkeypatch):
    # Recomputed activations, dropout replayed: the same loss and gradients, so the same weights
    # after 3 steps, and the flag did turn checkpointing on.
    checkpointing, enable = [], train.checkpoint_gradients
    monkeypatch.setattr(train, "checkpoint_gradients", lambda model, on: (
        enable(model, on), checkpointing.append(model.is_gradient_checkpointing)))
    weights = []
    for flags in ([], ["--gradient_checkpointing"]):
        out = tmp_path / str(len(flags))
        train.main(tiny_train_args(clean_dir, vocab, out, "--stop_after_steps", 3, *flags))
        weights.append(load_file(str(out / "last" / "model.safetensors")))
    assert checkpointing == [False, True]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-6), name
