"""Knowledge distillation through train.py's own loop: --teacher (one model or an ensemble of any
vocabularies), --kd_alpha, --kd_temperature, --unlabelled and --student_layers."""
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, BertTokenizer

import train
from conftest import assert_clean_error, pretrained_folder, run_main, tiny_train_args
from ewect.distill import keep_layers
from ewect.modeling import bert_config, build_model
from ewect.prediction import TorchPredictor


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=atol, rtol=0), name


@pytest.fixture
def teacher_calls(monkeypatch):
    """The posts each teacher model is asked to label, counted."""
    calls = []
    predict = TorchPredictor.predict

    def counted(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return predict(self, texts, *args, **kwargs)

    monkeypatch.setattr(TorchPredictor, "predict", counted)
    return calls


def posts_in(clean_dir, name="usual_train.txt"):
    from ewect.data import clean_records, read_records

    return len(clean_records(read_records(str(clean_dir / name)), drop_empty=True))


def test_alpha_zero_is_exactly_the_plain_run(trained, clean_dir, vocab, tmp_path):
    out = tmp_path / "student"
    train.main(tiny_train_args(clean_dir, vocab, out, "--teacher", trained / "best",
                               "--kd_alpha", 0))
    assert_same_weights(out / "last", trained / "last")


def test_the_teacher_runs_once_per_post_and_not_on_resume(trained, clean_dir, vocab, tmp_path,
                                                          teacher_calls):
    # 2 epochs, killed mid-epoch 1 and resumed: the teacher labelled each post once, and the
    # resumed run ends where an uninterrupted one does.
    kd = ("--teacher", trained / "best", "--kd_alpha", 0.7, "--kd_temperature", 3)
    whole = tmp_path / "whole"
    train.main(tiny_train_args(clean_dir, vocab, whole, *kd))
    assert teacher_calls == [posts_in(clean_dir)]
    resumed = tmp_path / "resumed"
    train.main(tiny_train_args(clean_dir, vocab, resumed, *kd, "--stop_after_steps", 3))
    train.main(tiny_train_args(clean_dir, vocab, resumed, *kd, "--resume"))
    assert teacher_calls == [posts_in(clean_dir)] * 2  # once per run, none on --resume
    assert_same_weights(resumed / "last", whole / "last", atol=1e-6)
    assert "read from" in (resumed / "train.log").read_text()
    # A new run in another precision asks the teacher again; its --resume in any precision not.
    train.main(tiny_train_args(clean_dir, vocab, resumed, *kd, "--precision", "bf16",
                               "--overwrite_output_dir", "--stop_after_steps", 1))
    train.main(tiny_train_args(clean_dir, vocab, resumed, *kd, "--resume", "--stop_after_steps",
                               2))
    assert teacher_calls == [posts_in(clean_dir)] * 3
    # and the teacher changed what was learnt
    assert any(not torch.equal(a, b) for a, b in zip(weights(whole / "last").values(),
                                                     weights(trained / "last").values()))


def test_an_ensemble_of_teachers_with_other_vocabularies(trained, clean_dir, vocab, tmp_path,
                                                         teacher_calls):
    # A second teacher with its own small vocabulary (the fixture's characters): each member
    # tokenizes with its own tokenizer; the soft labels are the mean of the two.
    chars = sorted({c for line in (clean_dir / "usual_train.txt").read_text("utf-8")
                    for c in line if "\u4e00" <= c <= "\u9fff"})
    small_vocab = tmp_path / "vocab.txt"
    small_vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]),
                           encoding="utf-8")
    other = tmp_path / "other"
    train.main(tiny_train_args(clean_dir, str(small_vocab), other, "--epochs", 1))
    assert BertTokenizer.from_pretrained(other / "best").vocab_size != (
        BertTokenizer.from_pretrained(trained / "best").vocab_size)
    out = tmp_path / "student"
    train.main(tiny_train_args(clean_dir, vocab, out, "--teacher", trained / "best",
                               other / "best", "--stop_after_steps", 2))
    assert teacher_calls == [posts_in(clean_dir)] * 2
    saved = torch.load(out / "teacher.pt", weights_only=True)
    assert saved["log_probs"].shape == (2, posts_in(clean_dir), 6)


def test_unlabelled_posts_learn_from_the_teacher(trained, clean_dir, vocab, tmp_path,
                                                 teacher_calls):
    # The eval file given as unlabelled posts adds none of them: learnt through the teacher,
    # they would make the eval scores that pick the best epoch optimistic.
    out = tmp_path / "student"
    new = tmp_path / "posts.txt"
    new.write_text("今天又下雨了\n终于放假啦\n这也太吓人了吧\n", encoding="utf-8")
    virus_test = clean_dir / "virus_test_labeled.txt"  # the fixture's: copies of usual posts
    train.main(tiny_train_args(clean_dir, vocab, out, "--teacher", trained / "best",
                               "--unlabelled", clean_dir / "usual_eval_labeled.txt", new,
                               virus_test, "--epochs", 1))
    assert teacher_calls == [posts_in(clean_dir) + 3]
    log = (out / "train.log").read_text()
    assert "virus_test_labeled.txt looks like a test file: its text leaks into training" in log
    assert f"train: {teacher_calls[0]} posts" in log


def test_a_teacher_trained_again_is_asked_again(trained, clean_dir, vocab, tmp_path,
                                                teacher_calls):
    teacher = tmp_path / "teacher"
    shutil.copytree(trained / "best", teacher)
    out = tmp_path / "student"
    args = tiny_train_args(clean_dir, vocab, out, "--teacher", teacher, "--stop_after_steps", 1)
    train.main(args)
    train.main([*args, "--overwrite_output_dir"])  # the same teacher: its labels are reused
    assert len(teacher_calls) == 1
    model = teacher / "model.safetensors"
    os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 10))  # trained again
    train.main([*args, "--overwrite_output_dir"])
    assert len(teacher_calls) == 2


def test_a_resumed_run_learns_to_the_end_from_the_soft_labels_it_began_with(
        trained, clean_dir, vocab, tmp_path, teacher_calls):
    teacher = tmp_path / "teacher"
    shutil.copytree(trained / "best", teacher)
    out = tmp_path / "student"
    args = tiny_train_args(clean_dir, vocab, out, "--teacher", teacher)
    train.main([*args, "--stop_after_steps", "2"])
    # its teacher copied without its file times, or trained again: teacher.pt is read back
    model = teacher / "model.safetensors"
    os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 10))
    train.main([*args, "--stop_after_steps", "4", "--resume"])
    assert teacher_calls == [posts_in(clean_dir)]
    # teacher.pt written over by another command (another teacher, the same posts): never
    # learnt from; the run's own teacher labels the posts again
    saved = torch.load(out / "teacher.pt", weights_only=True)
    torch.save({**saved, "teachers": [[str(tmp_path / "another_teacher")]]}, out / "teacher.pt")
    train.main([*args, "--stop_after_steps", "6", "--resume"])
    assert teacher_calls == [posts_in(clean_dir)] * 2
    # its teacher moved away: teacher.pt is read back
    shutil.rmtree(teacher)
    train.main([*args, "--resume"])
    assert teacher_calls == [posts_in(clean_dir)] * 2
    log = (out / "train.log").read_text()
    assert log.count("changed since this run began") == 2, log
    assert "no longer holds the soft labels this run began with" in log
    assert (out / "best" / "model.safetensors").is_file()


def test_overwriting_the_teachers_own_folder_is_refused(trained, clean_dir, vocab, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    result = run_main("train.py", *tiny_train_args(clean_dir, vocab, run, "--teacher",
                                                   run / "best", "--overwrite_output_dir"))
    assert result.returncode == 2 and "error:" in result.stderr
    assert (run / "best" / "model.safetensors").is_file()


def test_student_layers_keep_exactly_the_chosen_layers(vocab, tmp_path):
    folder = pretrained_folder(tmp_path / "bert6", vocab, 6)
    saved = weights(folder)
    model, _ = build_model(str(folder))
    assert keep_layers(model, 3) == [0, 2, 5]  # evenly spaced, first and last kept
    kept = model.state_dict()
    assert model.config.num_hidden_layers == 3 and len(model.bert.encoder.layer) == 3
    for new, old in enumerate([0, 2, 5]):
        for name, value in saved.items():
            prefix = f"bert.encoder.layer.{old}."
            if name.startswith(prefix):
                assert torch.equal(kept[f"bert.encoder.layer.{new}." + name[len(prefix):]],
                                   value), name
    assert torch.equal(kept["bert.embeddings.word_embeddings.weight"],
                       saved["bert.embeddings.word_embeddings.weight"])


def test_a_student_cut_from_a_deeper_model_trains_and_loads(clean_dir, vocab, tmp_path):
    folder = pretrained_folder(tmp_path / "bert4", vocab, 4)
    args = tiny_train_args(clean_dir, vocab, tmp_path / "wb", "--epochs", 1)[3:]
    train.main(["--model_name", str(folder), "--student_layers", "2", *args])
    model = BertForSequenceClassification.from_pretrained(tmp_path / "wb" / "best")
    assert model.config.num_hidden_layers == 2


def test_bad_teachers_and_students_get_one_line(trained, clean_dir, vocab, tmp_path):
    two_way = tmp_path / "two_way"
    tokenizer = BertTokenizer(vocab)
    BertForSequenceClassification(bert_config(len(tokenizer), 1, 32, num_labels=2)).save_pretrained(
        two_way)
    tokenizer.save_pretrained(two_way)
    cases = [(["--teacher", two_way], "--teacher", "are not ('happy'"),
             (["--teacher", tmp_path / "missing"], "--teacher", "missing: no such folder"),
             (["--teacher", "someorg/teacher"], "--teacher someorg/teacher: no such folder"),
             (["--student_layers", 3, "--teacher", trained / "best"],
              "--student_layers 3: the model has only 2 layers")]
    folder = pretrained_folder(tmp_path / "bert2", vocab, 2)
    for extra, *message in cases:
        out = tmp_path / "out"
        args = tiny_train_args(clean_dir, vocab, out, *extra)
        if "--student_layers" in extra:
            args = ["--model_name", str(folder), *args[3:]]
        assert_clean_error(run_main("train.py", *args), *message)
        assert not (out / "last").exists()
        assert not (out / "teacher.pt").exists()  # said before the teacher's labelling


def test_more_student_layers_than_a_scratch_model_has_are_refused_at_once(tmp_path):
    result = run_main("train.py", "--from_scratch", "--num_layers", 2, "--student_layers", 3,
                      "--teacher", tmp_path, "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and "--student_layers 3: the model has only 2" in result.stderr

def test_unlabelled_posts_with_alpha_zero_are_refused(tmp_path):
    # They would only dilute each step's mean loss: alpha 0 takes nothing from the teacher.
    result = run_main("train.py", "--teacher", tmp_path, "--unlabelled", tmp_path / "posts.txt",
                      "--kd_alpha", 0, "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and "--unlabelled with --kd_alpha 0" in result.stderr


@pytest.mark.parametrize("flag, value", [("--kd_alpha", "0.9"), ("--kd_temperature", "3"),
                                         ("--kd_alpha", "0.5"), ("--kd_temperature", "2")])
def test_a_distillation_setting_without_a_teacher_is_refused(tmp_path, flag, value):
    # Without --teacher it would be ignored, and the run would be plain fine-tuning: even
    # when the value given is the one --teacher would take by default.
    result = run_main("train.py", flag, value, "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and f"{flag} needs --teacher" in result.stderr
