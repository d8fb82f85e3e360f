"""train.py's competition options: class weights, FGM, R-Drop, k-fold, --init_from and
--tune_bias, each doing what it says."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import train
from conftest import run_main, tiny_train_args
from ewect.config import LABELS
from ewect.data import Record, held_out_fold
from ewect.errors import UserError
from ewect.loss import AUTO_WEIGHT_CAP, class_weights, class_weights_arg, make_loss
from ewect.modeling import build_model, forward_mask


def tiny_model(vocab, dropout=0.0):
    torch.manual_seed(0)
    return build_model(None, dropout, from_scratch=True, vocab=vocab, num_layers=1,
                       hidden_size=32)[0]


def tiny_batch(vocab_size, posts=6, length=9):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab_size, (posts, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.arange(posts) % len(LABELS)}


def test_auto_class_weights_are_inverse_frequency_with_mean_one_and_a_cap():
    labels = [0] * 40 + [1] * 20 + [2] * 20 + [3] * 10 + [4] * 9 + [5] * 1
    weights = class_weights("auto", labels, "cpu")
    counts = np.bincount(labels)
    expected = np.minimum(len(labels) / (6 * counts), AUTO_WEIGHT_CAP)
    assert np.allclose(weights.numpy(), expected)
    assert weights[5] == AUTO_WEIGHT_CAP  # one neutral post: 16.7, capped
    teams = class_weights("1,1,1,2,1.5,1.5", labels, "cpu")
    assert teams.tolist() == [1, 1, 1, 2, 1.5, 1.5]
    assert class_weights("none", labels, "cpu") is None
    for bad in ("1,2", "1,1,1,1,1,0", "heavy"):
        with pytest.raises(Exception, match="expected none, auto or 6 positive numbers"):
            class_weights_arg(bad)


def test_fgm_adds_the_gradient_at_the_moved_embeddings_and_restores_them(vocab):
    """One step with FGM changes the weights by -(g_clean + g_adversarial) (plain SGD, lr 1,
    no clipping): g_adversarial taken with the word embeddings moved by epsilon along g_clean's
    normalised embedding gradient; afterwards the embeddings are the clean ones, stepped."""
    model, epsilon = tiny_model(vocab), 0.5
    batch = tiny_batch(model.config.vocab_size)
    embeddings = model.get_input_embeddings().weight
    start = {k: v.detach().clone() for k, v in model.named_parameters()}

    def gradient():
        model.zero_grad()
        loss, _ = make_loss("fp32")(model, batch)
        (loss / 6).backward()
        return {k: v.grad.clone() for k, v in model.named_parameters()}

    clean = gradient()
    with torch.no_grad():
        embeddings += epsilon * clean["bert.embeddings.word_embeddings.weight"] / (
            clean["bert.embeddings.word_embeddings.weight"].norm())
    adversarial = gradient()
    with torch.no_grad():
        embeddings.copy_(start["bert.embeddings.word_embeddings.weight"])
    model.zero_grad()

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, fused=True)  # takes found_inf
    train.train_step(model, [batch], 6, make_loss("fp32"), optimizer, None, 1e9,
                     fgm=(embeddings, epsilon))
    for name, param in model.named_parameters():
        expected = start[name] - clean[name] - adversarial[name]
        assert torch.allclose(param, expected, atol=1e-5), name


def test_rdrop_adds_alpha_times_the_symmetric_kl_of_two_dropout_samples(vocab):
    model = tiny_model(vocab, dropout=0.3).train()
    batch = tiny_batch(model.config.vocab_size)
    losses = {}
    for alpha in (0.0, 1.0, 3.0):
        torch.manual_seed(7)  # the same two dropout samples each time
        losses[alpha] = make_loss("fp32", rdrop=alpha or 1e-30)(model, batch)[0].item()
    divergence = losses[1.0] - losses[0.0]
    assert divergence > 0
    assert losses[3.0] - losses[0.0] == pytest.approx(3 * divergence, rel=1e-4)
    # Without dropout the two samples agree: R-Drop is the plain cross-entropy.
    model.eval()
    mask = forward_mask(model, batch["attention_mask"])
    plain = F.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=mask).logits,
                            batch["labels"], reduction="sum")
    assert make_loss("fp32", rdrop=1.0)(model, batch)[0].item() == pytest.approx(
        plain.item(), rel=1e-5)


def test_folds_partition_the_training_posts_stratified():
    records = [Record(i, str(i), LABELS[i % 3 if i < 90 else 3]) for i in range(100)]
    labels = [r.label for r in records]
    held_out = []
    for fold in range(1, 6):
        train_part, held = held_out_fold(records, labels, 5, fold, seed=42)
        assert len(train_part) == 80 and len(held) == 20
        assert {r.id for r in train_part}.isdisjoint(r.id for r in held)
        assert sum(r.label == LABELS[3] for r in held) == 2  # 10 fear posts, 2 per fold
        held_out += [r.id for r in held]
    assert sorted(held_out) == list(range(100))  # every post held out exactly once
    assert held_out_fold(records, labels, 5, 2, 42) == held_out_fold(
        records, labels, 5, 2, 42)


def test_a_fold_run_with_every_option_ends_with_tuned_decision_offsets(clean_dir, vocab,
                                                                       tmp_path):
    args = tiny_train_args(clean_dir, vocab, tmp_path, "--epochs", 1, "--folds", 3, "--fold", 2,
                           "--class_weights", "auto", "--adversarial", "fgm", "--rdrop", 1,
                           "--tune_bias")
    eval_file = args.index("--eval_file")
    args[eval_file + 1] = str(tmp_path / "absent.txt")  # a fold run never reads --eval_file
    train.main(args)
    log = (tmp_path / "train.log").read_text()
    assert "posts held out to pick the best epoch" in log and "class weights: happy" in log
    decision = json.loads((tmp_path / "best" / "decision.json").read_text())
    assert list(decision["offsets"]) == list(LABELS)
    assert "decision offsets (" in log and "fold 2 of 3" in decision["fitted_on"]


def test_init_from_continues_a_checkpoint_and_refuses_other_labels(clean_dir, vocab, trained,
                                                                   tmp_path):
    args = tiny_train_args(clean_dir, vocab, tmp_path / "virus", "--epochs", 1, "--lr", 0)
    del args[:3]  # --from_scratch --vocab VOCAB
    train.main(["--init_from", str(trained / "best"), *args])
    start, after = (load_file(str(folder / "model.safetensors"))
                    for folder in (trained / "best", tmp_path / "virus" / "last"))
    assert all(torch.equal(start[k], after[k]) for k in start)  # lr 0: nothing moved

    config = json.loads((trained / "best" / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "negative"}
    other = tmp_path / "sentiment"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="sentiment: checkpoint labels"):
        train.main(["--init_from", str(other), *args, "--overwrite_output_dir"])


def test_train_folds_trains_every_fold_once_and_tests_their_ensemble(clean_dir, vocab, tmp_path):
    import os
    import subprocess

    from conftest import ROOT

    args = tiny_train_args(clean_dir, vocab, tmp_path, "--epochs", 1)
    out = args.index("--output_dir")
    del args[out:out + 2]  # train_folds.sh gives each fold its own
    env = dict(os.environ, OMP_NUM_THREADS="1",
               TEST_FILES=str(clean_dir / "usual_test_labeled.txt"))
    command = ["sh", str(ROOT / "train_folds.sh"), "2", str(tmp_path / "folds"), *args]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    metrics = json.loads((tmp_path / "folds" / "test" / "usual_test_labeled.metrics.json")
                         .read_text())
    assert metrics["model_dir"] == " + ".join(str(tmp_path / "folds" / f"fold{k}" / "best")
                                              for k in (1, 2))
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 2


@pytest.mark.parametrize("dataset", [["--dataset", "virus"], ["--dataset=virus"]])
def test_train_folds_tests_the_track_it_trained(tmp_path, dataset):
    # train.sh and test.sh stubbed: what train_folds.sh passes to each is the question.
    import shutil
    import subprocess

    from conftest import ROOT

    shutil.copy(ROOT / "train_folds.sh", tmp_path)
    for script in ("train.sh", "test.sh"):
        (tmp_path / script).write_text(f'echo "{script} $*"\n')
    result = subprocess.run(["sh", str(tmp_path / "train_folds.sh"), "2", str(tmp_path / "out"),
                             *dataset], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    tested = [line for line in result.stdout.splitlines() if line.startswith("test.sh")]
    assert len(tested) == 1 and "--dataset virus" in tested[0], result.stdout


def test_train_folds_never_keeps_folds_trained_with_other_arguments(tmp_path):
    # A 5-fold usual run's folds kept by a 3-fold virus run would be tested as virus folds.
    import shutil
    import subprocess

    from conftest import ROOT

    shutil.copy(ROOT / "train_folds.sh", tmp_path)
    (tmp_path / "test.sh").write_text('echo "test.sh $*"\n')
    (tmp_path / "train.sh").write_text(  # a stub that finishes its fold
        'while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && out=$2; shift; done\n'
        'mkdir -p "$out" && echo "INFO done: best eval macro-F1" > "$out/train.log"\n')

    def folds(*args):
        return subprocess.run(["sh", str(tmp_path / "train_folds.sh"), "2", str(tmp_path / "out"),
                               *args], capture_output=True, text=True, timeout=30)

    assert folds("--epochs", "1").returncode == 0
    other = folds("--epochs", "1", "--dataset", "virus")
    assert other.returncode == 2 and "was trained by sh train_folds.sh 2 --epochs 1" in other.stderr
    again = folds("--epochs", "1")
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 2


def test_abbreviated_flags_are_refused(tmp_path):
    # train_folds.sh reads --dataset from train.py's flags: an abbreviation such as --data would
    # train the virus track and test the usual one.
    result = run_main("train.py", "--data", "virus", "--output_dir", tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --data" in result.stderr
