"""The fine-tuning loss of train.py, built once per run (make_loss), and the competition's
options that shape it: class weights, R-Drop and, with a teacher, distillation; FGM's move of the
word embeddings (fgm_attack) for a second pass of a step.

    loss = make_loss("bf16", class_weights("auto", labels, device), rdrop=1.0)
    summed, logits = loss(model, batch)   # batch: input_ids, attention_mask, labels (teacher)
"""
import argparse
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .config import LABELS
from .distill import distillation_loss
from .modeling import autocast, forward_mask

AUTO_WEIGHT_CAP = 3.0  # --class_weights auto: no class weighs more than this


def class_weights_arg(text):
    """argparse type of --class_weights: 'none', 'auto', or one positive weight per label."""
    if text in ("none", "auto"):
        return text
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(LABELS) or min(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected none, auto or {len(LABELS)} positive numbers ({', '.join(LABELS)}), "
            f"not {text!r}")
    return text


def class_weights(spec, labels, device, log=None):
    """The cross-entropy weight per label of --class_weights, on the device (and said to
    `log`), or None."""
    if spec == "none":
        return None
    if spec == "auto":  # inverse frequency: a post weighs 1 on average over the training data
        counts = np.bincount(labels, minlength=len(LABELS)).clip(min=1)
        weights = (len(labels) / (len(LABELS) * counts)).clip(max=AUTO_WEIGHT_CAP)
    else:
        weights = [float(w) for w in spec.split(",")]
    if log:
        log("class weights: " + ", ".join(f"{label} {w:.2f}" for label, w in zip(LABELS, weights)))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def classification_loss(logits, labels, weights=None):
    """Summed over the posts; train_step turns it into the mean over the whole step."""
    return F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")


def make_loss(precision, weights=None, rdrop=0.0, kd=None):
    """The run's loss, built once: loss(model, batch) gives (summed loss, logits) of one
    micro-batch. Cross-entropy with the class `weights`, or with kd = (alpha, T) the
    distillation loss against batch["teacher"]. With R-Drop the batch goes through twice in one
    pass (two dropout samples of each post): the mean of their two losses plus rdrop x their
    symmetric KL divergence; the logits are the first sample's."""
    def loss_of(logits, batch):
        if kd is None:
            return classification_loss(logits, batch["labels"], weights)
        return distillation_loss(logits, batch["labels"], batch["teacher"], *kd, weights)

    def loss(model, batch):
        ids, mask = batch["input_ids"], forward_mask(model, batch["attention_mask"])
        if rdrop:
            ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
        with autocast(precision, ids.device):
            logits = model(input_ids=ids, attention_mask=mask).logits
        if not rdrop:
            return loss_of(logits, batch), logits
        first, second = logits.float().chunk(2)
        log_p, log_q = F.log_softmax(first, -1), F.log_softmax(second, -1)
        divergence = (F.kl_div(log_p, log_q, reduction="sum", log_target=True)
                      + F.kl_div(log_q, log_p, reduction="sum", log_target=True)) / 2
        return (loss_of(first, batch) + loss_of(second, batch)) / 2 + rdrop * divergence, first

    return loss


@contextlib.contextmanager
def fgm_attack(embeddings, epsilon):
    """FGM: the word-embedding matrix moved by epsilon along its gradient (normalised) for one
    more forward and backward pass, then restored exactly. The gradient is the one accumulated so
    far in this step (this micro-batch's alone without gradient accumulation, as usual)."""
    saved = embeddings.detach().clone()
    # No host sync: a zero gradient moves nothing; a non-finite one makes the adversarial loss
    # non-finite, and train_step skips the step.
    with torch.no_grad():
        embeddings.add_(epsilon * embeddings.grad / embeddings.grad.norm().clamp_min(1e-12))
    try:
        yield
    finally:
        with torch.no_grad():
            embeddings.copy_(saved)
