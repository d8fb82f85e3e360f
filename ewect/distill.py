"""Knowledge distillation (Hinton et al. 2015; DistilBERT) for train.py: a teacher's soft labels,
computed once per training post and kept beside the run, and a student cut from a deeper model.

teacher_targets   the teachers' log-probabilities of every training post: computed before the
                  first step (under torchrun each process labels a share), saved as
                  OUTPUT_DIR/teacher.pt, read back on --resume (the ones the run began
                  with, whatever became of the teachers; labelled again, with a warning, only
                  when that file is gone, damaged or another teacher's)
soft_targets      the ensemble's probabilities at temperature T (mean of the members')
distillation_loss alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy
keep_layers       --student_layers: K evenly spaced layers of the encoder, as DistilBERT starts
                  (check_depth: K against the model's config, before any labelling)
"""
import hashlib
import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import UserError
from .modeling import check_labels
from .prediction import weights_identity

TEACHER_FILE = "teacher.pt"
log = logging.getLogger("ewect.distill")  # train.py's handlers print it as its own lines


def check_teachers(teacher_dirs):
    """Each --teacher is a checkpoint folder of this repo's six labels, or a one-line error."""
    for folder in teacher_dirs:
        if not os.path.isdir(os.path.expanduser(folder)):
            raise UserError(f"--teacher {folder}: no such folder")
        try:
            check_labels(folder)
        except UserError as err:
            raise UserError(f"--teacher {err}") from None


def fingerprint(texts):
    """What the saved targets were computed on: the posts, in order."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def teacher_targets(teacher_dirs, texts, output_dir, proc, precision, began_with=None):
    """(log-probabilities, identity): the teachers' (members, posts, labels) log-probabilities
    of the cleaned training texts, and the teachers they came from, which the run keeps in its
    training state. Read from OUTPUT_DIR/teacher.pt when it holds them for these posts, these
    teachers and this precision, or, on --resume, the teachers the run began with
    (`began_with`), whatever became of them since: the run learns to the end from the same
    targets. Else each process labels
    every world_size-th post on its device and the shares are gathered (with a GPU each, a large
    --unlabelled corpus takes about 1/N of the time, and no process waits long at a
    collective); rank 0 saves them. The teachers compute in the run's `precision` (fp32 on any
    CPU: prediction's own default would be bf16 on some, and the targets would depend on the
    machine). `proc`: this Process of the run (ewect.training)."""
    path = os.path.join(output_dir, TEACHER_FILE)
    wanted = {"teachers": [weights_identity(t, calibrated=False) for t in teacher_dirs],
              "posts": fingerprint(texts), "precision": precision}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, or cut short by a kill: label again
        state = {}
    rank, world, device = proc.rank, proc.world_size, proc.device
    kept = state.get("teachers")
    if began_with:  # --resume: the targets the run began with (or today's teachers'), as made
        usable = state.get("posts") == wanted["posts"] and kept in (wanted["teachers"], began_with)
    else:  # a new run: targets of these teachers in this run's precision, or none
        usable = all(state.get(key) == value for key, value in wanted.items())
    if world > 1:  # all processes take the same branch, even if one could not read the file
        agreed = torch.tensor(int(usable), device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        usable = bool(agreed)
    if usable:
        if proc.is_main:
            log.info("teacher: its soft labels of the training posts are read from %s", path)
            changed = [folder for folder, now, then in zip(teacher_dirs, wanted["teachers"], kept)
                       if now != then]
            if changed:
                log.warning("teacher: %s changed since this run began (moved, copied or trained "
                            "again); the run goes on with the soft labels it began with. Start a "
                            "new run to learn from the teacher as it is now", " ".join(changed))
        return state["log_probs"], kept
    if began_with and proc.is_main:
        log.warning("teacher: %s no longer holds the soft labels this run began with; the "
                    "teachers label the posts again, and the rest of the run learns from what "
                    "they say now", path)
    from .prediction import load_predictor

    check_teachers(teacher_dirs)
    if proc.is_main:
        log.info("teacher: labelling %d training posts with %d model(s), once for the whole run, "
                 "%d process(es) sharing them, into %s", len(texts), len(teacher_dirs), world, path)
    share = []
    for folder in teacher_dirs:  # one at a time: a large ensemble need not fit at once
        # the model's own probabilities: --kd_temperature alone sets the softness of its labels
        probabilities = load_predictor(folder, device=device.type, local_rank=device.index or 0,
                                       precision=precision, calibrated=False
                                       ).predict(texts[rank::world])
        share.append(torch.from_numpy(probabilities).float().clamp_min(1e-30).log())
    shares = [torch.stack(share)]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, torch.stack(share))
    log_probs = torch.empty(len(teacher_dirs), len(texts), shares[0].shape[-1])
    for r, labelled in enumerate(shares):
        log_probs[:, r::world] = labelled
    del shares, share  # a large corpus: keep one copy
    if proc.is_main:
        torch.save({**wanted, "log_probs": log_probs}, path + ".tmp")
        os.replace(path + ".tmp", path)  # a kill while saving leaves no half a file
    if world > 1:
        dist.barrier()  # nobody reads teacher.pt (on --resume) before it is whole
    return log_probs, wanted["teachers"]


def soft_targets(log_probs, temperature):
    """The teachers' mean probabilities at temperature T, per post. log p is the logits up to a
    constant per post, so softmax(log p / T) is softmax(logits / T)."""
    return F.softmax(log_probs / temperature, dim=-1).mean(0)


def distillation_loss(logits, labels, targets, alpha, temperature, weights=None):
    """Summed over the posts: alpha * T^2 * KL(targets || softmax(logits / T)) (T^2 keeps the
    gradient's scale as T changes) + (1 - alpha) * cross-entropy on the gold labels. Posts
    without a gold label (-100: --unlabelled) get the first term only."""
    logits = logits.float()
    cross_entropy = F.cross_entropy(logits, labels, weight=weights, reduction="sum")
    divergence = F.kl_div(F.log_softmax(logits / temperature, dim=-1), targets,
                          reduction="sum")
    return alpha * temperature ** 2 * divergence + (1 - alpha) * cross_entropy


def check_depth(model_name, count):
    """--student_layers against a pretrained --model_name's depth, read from its config before a
    teacher labels anything (keep_layers checks the model itself, however it was built)."""
    from transformers import AutoConfig

    folder = os.path.expanduser(model_name)
    try:  # a hub name from the cache only: an unreachable hub would cost its retries twice
        depth = AutoConfig.from_pretrained(
            folder, local_files_only=not os.path.isdir(folder)).num_hidden_layers
    except (OSError, ValueError, AttributeError):
        return  # no config here: building the model says what is wrong
    if count > depth:
        raise UserError(f"--student_layers {count}: the model has only {depth} layers")


def keep_layers(model, count):
    """Cut the encoder down to `count` evenly spaced layers, first and last included (12 -> 6
    keeps 0, 2, 4, 7, 9, 11, DistilBERT's choice). Returns the kept layers' indices."""
    encoder = getattr(getattr(model, model.base_model_prefix, None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"--student_layers: no encoder.layer list in {type(model).__name__}")
    total = len(layers)
    if count > total:
        raise UserError(f"--student_layers {count}: the model has only {total} layers")
    keep = [round(i * (total - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]
    encoder.layer = torch.nn.ModuleList(layers[i] for i in keep)
    model.config.num_hidden_layers = count
    return keep
