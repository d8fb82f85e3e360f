"""The training step, shared by train.py and bench/train_speed.py so the benchmark measures
exactly what training runs."""
import torch
import torch.nn.functional as F

from .config import LABELS
from .metrics import scores


def decay_groups(model, weight_decay):
    """Parameter groups with no weight decay on biases and LayerNorm weights (the 1-d ones)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model, lr, weight_decay, device):
    """AdamW over decay_groups; fused on CUDA, which also lets the grad scaler skip steps
    without a host sync."""
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr,
                             fused=torch.device(device).type == "cuda")


def confusion_counts(labels, logits):
    """Flat confusion matrix (gold * labels + predicted) on the logits' device, without a sync."""
    return torch.bincount(labels * len(LABELS) + logits.argmax(-1), minlength=len(LABELS) ** 2)


def make_grad_scaler(device, amp_dtype):
    """The scaler also skips every step whose gradients are not finite; only fp16 needs real
    scaling, so elsewhere it starts at 1 and never grows."""
    fp16 = amp_dtype == torch.float16
    return torch.amp.GradScaler(torch.device(device).type, init_scale=2.0 ** 16 if fp16 else 1.0,
                                growth_interval=2000 if fp16 else 2 ** 30)


def compute_loss(logits, labels):
    return F.cross_entropy(logits.float(), labels)


def train_step(model, batch, optimizer, scaler, amp_dtype, max_grad_norm):
    """One optimizer step on a batch already on the device; returns (loss, logits), not synced."""
    labels = batch["labels"]
    device_type = labels.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = compute_loss(logits, labels)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(
        [p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()


class RunningMetrics:
    """Loss, confusion matrix and the run of non-finite losses since the last read, kept on the
    device: update() never waits for the GPU, read() syncs once."""

    def __init__(self, device):
        zeros = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.loss_sum, self.finite_steps = zeros(torch.float32), zeros(torch.long)
        self.nonfinite_streak = zeros(torch.long)
        self.confusion = torch.zeros(len(LABELS) ** 2, dtype=torch.long, device=device)

    def update(self, loss, logits, labels):
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.finite_steps += finite
        self.nonfinite_streak = torch.where(finite, 0, self.nonfinite_streak + 1)
        self.confusion += confusion_counts(labels, logits)

    def read(self, all_reduce=None):
        """(mean finite loss, scores, longest current non-finite streak) over all processes
        (all_reduce(tensor, op) sums or maxes across them); resets all but the streak."""
        reduce = all_reduce or (lambda tensor, op=None: tensor)
        streak = reduce(self.nonfinite_streak.clone(), "max").item()
        result = scores(reduce(self.confusion.clone()).view(len(LABELS), -1).cpu().numpy())
        finite_steps = reduce(self.finite_steps.clone()).item()
        mean_loss = reduce(self.loss_sum.clone()).item() / max(1, finite_steps)
        for running in (self.loss_sum, self.finite_steps, self.confusion):
            running.zero_()
        return mean_loss, result, streak
