"""Interrupted runs resume exactly; saves are atomic; a loss that stays non-finite stops cleanly."""
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ewect.loss
import pretrain
import train
from conftest import ROOT, tiny_train_args
from ewect.errors import UserError
from ewect.training import CaptureFailed
from ewect.modeling import build_model, load_checkpoint, restore_interrupted_save


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6), name


def test_interrupted_then_resumed_run_equals_uninterrupted(clean_dir, vocab, trained, tmp_path):
    # `trained` is the uninterrupted run: 2 epochs of 6 steps. Stop mid-epoch 1, resume, and again
    # right at an epoch boundary, then finish.
    out = tmp_path / "wb"
    train.main(tiny_train_args(clean_dir, vocab, out, "--stop_after_steps", 3))
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["progress"]["global_step"] == 3 and state["progress"]["step_in_epoch"] == 3
    after_3_steps = weights(out / "last")
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume", "--stop_after_steps", 6))
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume"))
    assert any(not torch.equal(after_3_steps[k], v) for k, v in weights(out / "last").items())
    assert_same_weights(out / "best", trained / "best")
    assert_same_weights(out / "last", trained / "last")
    best = [json.loads((d / "best" / "eval_results.json").read_text()) for d in (out, trained)]
    assert best[0] == pytest.approx(best[1])


def test_resume_refuses_a_different_run(clean_dir, vocab, trained):
    with pytest.raises(UserError, match="--batch_size was 8, now 4"):
        train.main(tiny_train_args(clean_dir, vocab, trained, "--resume", "--batch_size", 4))


def test_resume_applies_a_new_learning_rate(clean_dir, vocab, tmp_path):
    out = tmp_path / "wb"
    train.main(tiny_train_args(clean_dir, vocab, out, "--stop_after_steps", 3))
    before = torch.load(out / "last" / "training_state.pt", weights_only=True)
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume", "--lr", "5e-4",
                               "--stop_after_steps", 4))
    after = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert after["scheduler"]["base_lrs"] == pytest.approx([5e-4, 5e-4])
    old_lr = before["optimizer"]["param_groups"][0]["lr"]  # warming up: 3/6 of the 1e-3 peak
    assert after["optimizer"]["param_groups"][0]["lr"] == pytest.approx(old_lr / 2 * 4 / 3)


def test_a_new_run_does_not_overwrite_an_old_one_by_accident(clean_dir, vocab, trained, tmp_path):
    with pytest.raises(UserError, match="already holds a training run"):
        train.main(tiny_train_args(clean_dir, vocab, trained))
    # Not even when last/ was deleted: best/ is the run's result.
    out = tmp_path / "wb"
    shutil.copytree(trained / "best", out / "best")
    with pytest.raises(UserError, match=r"already holds a training run \(best/\)"):
        train.main(tiny_train_args(clean_dir, vocab, out))


def test_overwrite_starts_afresh(clean_dir, vocab, trained, tmp_path):
    out = tmp_path / "wb"
    shutil.copytree(trained, out)
    old_events = set((out / "tensorboard").iterdir())
    train.main(tiny_train_args(clean_dir, vocab, out, "--overwrite_output_dir",
                               "--stop_after_steps", 2))
    assert not (out / "best").exists()  # the old run's best/ is gone with it
    assert not old_events & set((out / "tensorboard").iterdir())  # no two runs' curves mixed
    assert (out / "train.log").read_text().count("arguments:") == 1


def test_resume_without_saved_state(clean_dir, vocab, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train.main(tiny_train_args(clean_dir, vocab, tmp_path, "--resume"))


def test_sigterm_saves_last_and_resume_finishes(clean_dir, vocab, tmp_path):
    out = tmp_path / "wb"
    args = tiny_train_args(clean_dir, vocab, out, "--epochs", 500, "--log_every", 1)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:  # wait until training is under way (an epoch has ended)
        if "epoch 1: eval" in line:
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
    assert "saved" in output and "--resume" in output and "Traceback" not in output
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["progress"]["global_step"] >= 6
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume", "--epochs",
                               state["progress"]["epoch"] + 1))
    assert (out / "best" / "model.safetensors").is_file()


KILL_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ewect import modeling
target, when = sys.argv[1], sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if when == "write":
    modeling.save_atomically(target, lambda folder: ((folder / "model.safetensors").write_bytes(b"half"), die()))
else:  # between the two renames
    real_replace, calls = os.replace, []
    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            die()
        real_replace(src, dst)
    modeling.os.replace = replace
    modeling.save_atomically(target, lambda folder: (folder / "new").write_text("new"))
"""


@pytest.mark.parametrize("when", ["write", "rename"])
def test_a_killed_save_leaves_the_previous_checkpoint(trained, tmp_path, when):
    best = tmp_path / "best"
    shutil.copytree(trained / "best", best)
    before = weights(best)
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(root=str(ROOT)),
                             str(best), when], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    restore_interrupted_save(best)  # what every load and save does first
    after = weights(best)
    assert all(torch.equal(before[k], after[k]) for k in before)
    load_checkpoint(best)


def test_a_loss_that_stays_non_finite_stops_the_run(clean_dir, vocab, tmp_path, monkeypatch):
    monkeypatch.setattr(ewect.loss, "classification_loss",
                        lambda logits, labels, weights=None: logits.sum() * float("nan"))
    with pytest.raises(UserError, match=r"not finite for 2 steps in a row \(steps 1-2\)"):
        train.main(tiny_train_args(clean_dir, vocab, tmp_path))
    # Every step was skipped outright: the weights are the initial ones, Adam never stepped.
    torch.manual_seed(42)
    initial = build_model(None, from_scratch=True, vocab=vocab, num_layers=2,
                          hidden_size=32)[0].state_dict()
    saved = weights(tmp_path / "last")
    assert all(torch.equal(saved[name], initial[name]) for name in saved)
    state = torch.load(tmp_path / "last" / "training_state.pt", weights_only=True)
    assert all(s["step"] == 0 for s in state["optimizer"]["state"].values())


def test_overwrite_refuses_to_delete_the_model_the_run_starts_from(clean_dir, vocab, trained,
                                                                    tmp_path):
    out = tmp_path / "wb"
    shutil.copytree(trained, out)
    fine_tune = tiny_train_args(clean_dir, vocab, out, "--overwrite_output_dir")[3:]  # no scratch
    for start in ("--model_name", "--init_from"):
        with pytest.raises(UserError, match=r"wb/best is in --output_dir .*another --output_dir"):
            train.main([start, str(out / "best"), *fine_tune])
    shutil.copy(vocab, out / "best" / "vocab.txt")  # --from_scratch reads only its --vocab
    with pytest.raises(UserError, match=r"wb/best is in --output_dir"):
        train.main(tiny_train_args(clean_dir, str(out / "best" / "vocab.txt"), out,
                                   "--overwrite_output_dir"))
    corpus = str(clean_dir / "usual_train.txt")
    with pytest.raises(UserError, match=r"wb/best is in --output_dir"):  # continued pretraining
        pretrain.main(["--model_name", str(out / "best"), "--corpus", corpus, "--device", "cpu",
                       "--output_dir", str(out), "--overwrite_output_dir"])
    assert (out / "best" / "model.safetensors").is_file()


def test_a_mid_epoch_resume_that_would_shift_the_steps_is_refused(clean_dir, vocab, tmp_path):
    # Steps of n - 1 posts: the epoch is one full step and one of a single post, which a run of
    # 2 processes leaves out (each process needs a post). A run stopped mid-epoch with 2
    # processes and resumed with 1 would continue in another list of steps: refused.
    from ewect.data import read_records

    posts = len(read_records(str(clean_dir / "usual_train.txt")))
    out = tmp_path / "wb"
    args = tiny_train_args(clean_dir, vocab, out, "--batch_size", posts - 1)
    train.main([*args, "--stop_after_steps", "1"])
    state_file = out / "last" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["rng_per_rank"] *= 2  # as a 2-process run saves it
    torch.save(state, state_file)
    with pytest.raises(UserError, match="stopped mid-epoch with 2 process.*1 now"):
        train.main([*args, "--resume"])


def test_a_failed_overwrite_keeps_the_earlier_run(clean_dir, vocab, trained, tmp_path):
    # --overwrite_output_dir deleted the earlier run first: a typo in a file name cost the model.
    out = tmp_path / "wb"
    shutil.copytree(trained, out)
    args = tiny_train_args(clean_dir, vocab, out, "--overwrite_output_dir")
    args[args.index("--train_file") + 1] = str(tmp_path / "typo.txt")
    with pytest.raises(UserError, match="typo.txt: file not found"):
        train.main(args)
    assert_same_weights(out / "best", trained / "best")
    assert_same_weights(out / "last", trained / "last")
    assert "INFO done: " in (out / "train.log").read_text()  # what the wrappers look for


def test_cuda_graphs_where_a_run_cannot_replay_are_refused_before_anything_is_lost(
        clean_dir, vocab, trained, tmp_path):
    out = tmp_path / "wb"
    shutil.copytree(trained, out)
    args = tiny_train_args(clean_dir, vocab, out, "--overwrite_output_dir", "--cuda_graphs",
                           "--per_device_batch_size", 4)
    with pytest.raises(UserError, match=r"--cuda_graphs needs a GPU \(--device cuda\); one "
                                        r"micro-batch per step"):
        train.main(args)
    assert_same_weights(out / "best", trained / "best")


def test_resume_refuses_changed_posts_and_loss(clean_dir, vocab, tmp_path):
    # Only the files' names were compared: posts edited in place were trained on from mid-epoch.
    data = tmp_path / "data"
    shutil.copytree(clean_dir, data)
    out = tmp_path / "wb"
    train.main(tiny_train_args(data, vocab, out, "--stop_after_steps", 3))
    with pytest.raises(UserError, match=r"--rdrop was 0\.0, now 1\.0"):
        train.main(tiny_train_args(data, vocab, out, "--resume", "--rdrop", 1))
    train_file = data / "usual_train.txt"
    records = json.loads(train_file.read_text(encoding="utf-8"))
    records[-1]["content"] += "改"  # one post edited in place: as many posts, as many steps
    train_file.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match="--resume: the training or eval posts differ"):
        train.main(tiny_train_args(data, vocab, out, "--resume"))


def test_a_resume_with_other_settings_says_which(clean_dir, vocab, tmp_path):
    out = tmp_path / "wb"
    train.main(tiny_train_args(clean_dir, vocab, out, "--stop_after_steps", 3))
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume", "--epochs", 3,
                               "--stop_after_steps", 4))
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "changed since the run began: --epochs 2 -> 3" in log


def test_a_failed_cuda_graph_capture_saves_last_for_a_resume(clean_dir, vocab, trained, tmp_path,
                                                             monkeypatch):
    # On the CPU a stand-in for CudaGraphSteps: steps run eagerly, the third capture fails.
    class CaptureFailsAtStep3:
        graphs, replays, steps = {}, 0, 0

        def __call__(self, compute, batch, training):
            self.steps += 1
            if self.steps == 3:
                raise CaptureFailed("--cuda_graphs: capturing a step failed (stand-in)")
            return compute(batch)

    monkeypatch.setattr(train, "cuda_graphs", lambda *args: CaptureFailsAtStep3())
    out = tmp_path / "wb"
    with pytest.raises(UserError, match=r"capturing a step failed \(stand-in\); saved .*last: "
                                        "continue with --resume, without --cuda_graphs"):
        train.main(tiny_train_args(clean_dir, vocab, out))
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["progress"]["global_step"] == 2
    monkeypatch.undo()
    train.main(tiny_train_args(clean_dir, vocab, out, "--resume"))
    assert_same_weights(out / "last", trained / "last")  # nothing lost
