"""Fine-tune a BERT-style classifier on SMP2020-EWECT usual_train; keep the epoch with the best
usual_eval macro-F1 (--dataset virus: virus_train and virus_eval; both: the two tracks together).

    python train.py                                    # the published recipe, bert-base-chinese
    python train.py --dataset virus                    # the virus track, into workspace/wb_virus
    python train.py --train_file a.txt b.csv --eval_file c.xlsx --output_dir workspace/mine
    python train.py --model_name /path/to/bert-base-chinese --device cuda
    torchrun --nproc_per_node=4 train.py               # 4 GPUs; still 64 posts a step in all
    python train.py --resume                           # continue an interrupted run
    python train.py --from_scratch --num_layers 2 --hidden_size 128 --epochs 3 --device cpu
        # offline, small: a random BERT on a vocabulary built from the training posts
    python train.py --class_weights auto --adversarial fgm --rdrop 1 --tune_bias   # the
        # competition's tricks, each off by default (measured: bench/RESULTS.md)
    python train.py --folds 5 --fold 2 --output_dir workspace/folds/fold2   # one k-fold member;
        # sh train_folds.sh 5 workspace/folds trains all five and tests their ensemble
    python train.py --teacher workspace/seed42/best workspace/seed43/best --student_layers 4 \\
        --output_dir workspace/student   # distil an ensemble into a 4-layer cut of the model

Writes to --output_dir (workspace/wb; wb_virus, wb_both for the other --dataset): best/ (the best
epoch, save_pretrained: weights, config with id2label, tokenizer; with --tune_bias also
decision.json), last/ (the same plus training_state.pt, everything --resume needs; written after
every epoch and on Ctrl-C/SIGTERM), tensorboard/ and train.log.
"""
import argparse
import contextlib
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ewect.config import DATASETS, LABEL2ID, LABELS, dataset_files, dataset_output_dir
from ewect.data import (Collator, add_label_names_arg, clean_records, encode, pad_multiple,
                        read_records, split_for_step, step_batches)
from ewect.decision import save_offsets, tune_offsets
from ewect.distill import (check_depth, distillation_loss, keep_layers, soft_targets,
                           teacher_targets)
from ewect.errors import (UserError, non_negative_float, non_negative_int, positive_float,
                          positive_int, run_cli, script_help)
from ewect.metrics import classification_scores, scores
from ewect.mlm import read_corpus
from ewect.modeling import (AMP_DTYPES, autocast, build_model, check_labels, choose_precision,
                            expanded_mask, load_checkpoint, save_checkpoint)
from ewect.prediction import check_max_length, predict_logits, softmax
from ewect.training import (CaptureFailed, CudaGraphSteps, RunningSums, StopRequest,
                            add_shared_args, all_reduce, apply_update, backward, clear_earlier_run, clip_gradients,
                            close_processes, describe_processes, linear_schedule,
                            load_training_state, loader_workers, make_grad_scaler,
                            make_optimizer, posts_fingerprint,
                            prepare_output_dir, refuse_changed_posts, refuse_cpu_marathon,
                            refuse_shifted_resume, resume_from_state, save_training_state,
                            setup_logging, setup_processes, step_plan, stop_for_resume,
                            stop_if_every_step_skipped, wrap_for_training, write_json)
from ewect.vocab import scratch_vocab

# What a resumed run must share with the run it continues: the model, the data, the batches and
# the loss (the posts themselves are compared too). Anything else (epochs, lr, patience, device,
# precision, processes) may change on --resume, and is logged when it does.
ESSENTIAL_ARGS = ("model_name", "from_scratch", "vocab", "num_layers", "hidden_size", "dropout",
                  "train_file", "eval_file", "folds", "fold", "batch_size", "max_length", "seed",
                  "teacher", "unlabelled", "student_layers", "kd_alpha", "kd_temperature",
                  "class_weights", "rdrop", "adversarial", "adv_epsilon")
KD_DEFAULTS = {"kd_alpha": 0.5, "kd_temperature": 2.0}  # given without --teacher: refused
SCRATCH_LR = 5e-4  # --lr's default with --from_scratch; see README's results table
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


log = logging.getLogger("train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(**script_help(__doc__))
    add_shared_args(p, "hub id or local folder of a pretrained model to fine-tune")
    p.add_argument("--dataset", default="usual", choices=DATASETS,
                   help="track whose cleaned files and output folder are the defaults of the "
                        "three flags below: usual, virus, or both (one model on the two)")
    # '%(default).0s' prints nothing; it stops argparse adding "(default: None)"
    p.add_argument("--train_file", nargs="+", default=None,
                   help="training file(s), read together (default: the --dataset's train files)"
                        "%(default).0s")
    p.add_argument("--eval_file", nargs="+", default=None,
                   help="file(s) whose posts together pick the best epoch (default: the "
                        "--dataset's eval files)%(default).0s")
    p.add_argument("--output_dir", default=None,
                   help="where best/, last/, logs go (default: workspace/wb, wb_virus or "
                        "wb_both, by --dataset)%(default).0s")
    p.add_argument("--lr", type=non_negative_float, default=None,
                   help="peak learning rate of AdamW (default: 1e-5, the published fine-tuning "
                        f"recipe; {SCRATCH_LR:g} with --from_scratch, as random weights need "
                        "larger steps)%(default).0s")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    p.add_argument("--patience", type=non_negative_int, default=0,
                   help="stop after this many epochs without a better eval macro-F1 (0: never)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    add_label_names_arg(p)
    p.add_argument("--init_from", metavar="DIR",
                   help="a checkpoint of this script (e.g. workspace/wb/best) whose encoder and "
                        "classifier continue training here, as usual -> virus: like --model_name "
                        "DIR, checked to be a six-label classifier")
    p.add_argument("--folds", type=positive_int, default=1,
                   help="K > 1: train on K-1 stratified parts of the training files and pick the "
                        "best epoch on the held-out part (--fold) instead of --eval_file; "
                        "train_folds.sh runs all K and tests their ensemble")
    p.add_argument("--fold", type=positive_int, default=1, help="which part is held out, 1..K")
    p.add_argument("--class_weights", type=class_weights_arg, default="none",
                   help="cross-entropy class weights: none; auto (inverse class frequency, mean "
                        f"1, capped at {AUTO_WEIGHT_CAP:g}); or six numbers in label order, e.g. "
                        "1,1,1,2,1.5,1.5")
    p.add_argument("--adversarial", choices=["none", "fgm"], default="none",
                   help="fgm: a second forward/backward pass with the word embeddings moved "
                        "along their gradient (FGM, Miyato et al. 2017); about 2x the compute")
    p.add_argument("--adv_epsilon", type=positive_float, default=1.0,
                   help="FGM's step: the norm of the move of the word-embedding matrix")
    p.add_argument("--rdrop", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="R-Drop (Liang et al. 2021): each post passes twice with different "
                        "dropout, plus ALPHA x their symmetric KL divergence (0: off); 2x the "
                        "compute per step")
    p.add_argument("--cuda_graphs", action="store_true",
                   help="experimental, not yet run on a GPU (docs/gpu.md): replay each step's "
                        "forward and backward from a CUDA graph (one per batch shape), the same "
                        "kernels launched in one call instead of one by one. One GPU, bf16 or "
                        "fp32, no gradient accumulation, FGM or --compile")
    p.add_argument("--tune_bias", action="store_true",
                   help="after training, fit per-class logit offsets that maximise macro-F1 on "
                        "the eval posts and save them as best/decision.json (test.py, "
                        "inference.py and app.py apply them)")
    p.add_argument("--teacher", nargs="+", metavar="DIR",
                   help="knowledge distillation: checkpoint(s) of this script (several: their "
                        "mean probabilities) that the model learns from besides the gold labels; "
                        "any size and vocabulary. Run once per training post before the first "
                        "step, kept as OUTPUT_DIR/teacher.pt")
    p.add_argument("--kd_alpha", type=float,
                   help="with --teacher: the loss is alpha x T^2 x KL(teacher || model) at "
                        f"temperature T + (1 - alpha) x cross-entropy on the gold labels "
                        f"(default: {KD_DEFAULTS['kd_alpha']})")
    p.add_argument("--kd_temperature", type=positive_float,
                   help="with --teacher: T, the softmax temperature of both in the KL term "
                        f"(default: {KD_DEFAULTS['kd_temperature']})")
    p.add_argument("--unlabelled", nargs="+", metavar="FILE",
                   help="with --teacher: more training posts without labels, learnt from the "
                        "teacher's soft labels alone (any file inference.py reads)")
    p.add_argument("--student_layers", type=positive_int, default=None, metavar="K",
                   help="keep K evenly spaced layers of --model_name (first and last included, "
                        "as DistilBERT starts): a smaller, faster model to train, e.g. with "
                        "--teacher")
    args = p.parse_args(argv)
    if args.unlabelled and not args.teacher:
        p.error("--unlabelled needs --teacher: its posts have no labels but the teacher's")
    for flag, default in KD_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
        elif not args.teacher:  # a distillation setting would be ignored
            p.error(f"--{flag} needs --teacher: without one there is nothing to distil")
    if not 0 <= args.kd_alpha <= 1:
        p.error("--kd_alpha must be from 0 to 1")
    if args.unlabelled and args.kd_alpha == 0:
        p.error("--unlabelled with --kd_alpha 0: its posts are learnt from the teacher alone, "
                "which alpha 0 leaves out")
    if args.from_scratch and (args.student_layers or 0) > args.num_layers:
        p.error(f"--student_layers {args.student_layers}: the model has only {args.num_layers} "
                "layers (--num_layers)")
    if args.from_scratch and args.init_from:
        p.error("--from_scratch and --init_from exclude each other: start from one or the other")
    if args.fold > args.folds:
        p.error(f"--fold {args.fold} of --folds {args.folds}: the fold is 1..K")
    if args.init_from:
        args.model_name = args.init_from
    if args.lr is None:
        args.lr = SCRATCH_LR if args.from_scratch else 1e-5
    args.train_file = args.train_file or dataset_files(args.dataset, "train")
    args.eval_file = args.eval_file or dataset_files(args.dataset, "eval")
    args.output_dir = args.output_dir or dataset_output_dir(args.dataset)
    return args


def read_split(paths, args, drop_empty):
    """Validated records of the files, one after another, cleaned again (idempotent, about a
    second), so that a raw file is read exactly as its cleaned copy."""
    records = [record for path in paths for record in read_records(
        path, skip_bad_records=args.skip_bad_records, log=log.warning,
        label_names=args.label_names)]
    return clean_records(records, drop_empty)


def tokenize(records, tokenizer, max_length):
    """(token ids, label ids): every post tokenized once for the whole run."""
    return (encode(tokenizer, [r.content for r in records], max_length),
            [LABEL2ID[r.label] for r in records])


def held_out_fold(records, labels, folds, fold, seed):
    """(training part, held-out part) of the records: part `fold` of a stratified K-fold split,
    the same for every fold of one --seed, so the K runs of an ensemble partition the data."""
    from sklearn.model_selection import StratifiedKFold

    if folds > len(records):
        raise UserError(f"--folds {folds}: more folds than the {len(records)} posts to split")
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(
        np.zeros(len(labels)), labels)
    train_part, held_out = list(splits)[fold - 1]
    return [records[i] for i in train_part], [records[i] for i in held_out]


def class_weights(spec, labels, device):
    """The cross-entropy weight per label of --class_weights, on the device, or None."""
    if spec == "none":
        return None
    if spec == "auto":  # inverse frequency: a post weighs 1 on average over the training data
        counts = np.bincount(labels, minlength=len(LABELS)).clip(min=1)
        weights = (len(labels) / (len(LABELS) * counts)).clip(max=AUTO_WEIGHT_CAP)
    else:
        weights = [float(w) for w in spec.split(",")]
    return torch.tensor(weights, dtype=torch.float32, device=device)


def classification_loss(logits, labels, weights=None):
    """Summed over the posts; train_step turns it into the mean over the whole step."""
    return F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")


def forward_loss(model, batch, precision, weights=None, rdrop=0.0, kd=None):
    """(summed loss, logits) of one micro-batch: cross-entropy, or with kd = (alpha, T) the
    distillation loss against batch["teacher"]. With R-Drop the batch goes through twice in one
    pass (two dropout samples of each post): the mean of their two losses plus rdrop x their
    symmetric KL divergence; the logits are the first sample's."""
    ids, mask = batch["input_ids"], expanded_mask(batch["attention_mask"])
    if rdrop:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    with autocast(precision, ids.device):
        logits = model(input_ids=ids, attention_mask=mask).logits

    def loss_of(sample):
        if kd is None:
            return classification_loss(sample, batch["labels"], weights)
        return distillation_loss(sample, batch["labels"], batch["teacher"], *kd, weights)

    if not rdrop:
        return loss_of(logits), logits
    first, second = logits.float().chunk(2)
    mean_loss = (loss_of(first) + loss_of(second)) / 2
    log_p, log_q = F.log_softmax(first, -1), F.log_softmax(second, -1)
    divergence = (F.kl_div(log_p, log_q, reduction="sum", log_target=True)
                  + F.kl_div(log_q, log_p, reduction="sum", log_target=True)) / 2
    return mean_loss + rdrop * divergence, first


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


def confusion_counts(labels, logits):
    """Flat confusion matrix (gold * labels + predicted) of the posts with a gold label (not
    -100), on the device without a host sync (torch.bincount would sync to size its output)."""
    flat = labels.clamp(min=0) * len(LABELS) + logits.argmax(-1)
    counts = torch.zeros(len(LABELS) ** 2, dtype=torch.long, device=flat.device)
    return counts.index_add_(0, flat, (labels >= 0).long())


def train_step(model, pieces, step_size, optimizer, scaler, precision, max_grad_norm,
               world_size=1, options=None, graphs=None):
    """One optimizer step over this process's micro-batches (`pieces`, on the device) of a step
    of `step_size` posts. The gradient is that of the mean loss over all step_size posts, however
    they are split across processes (DDP averages over them) and micro-batches. `options` (a dict,
    None: plain cross-entropy) holds the class weights, R-Drop's alpha, with FGM the word
    embeddings and epsilon, and with a teacher kd = (alpha, temperature). With `graphs` (a
    CudaGraphSteps: --cuda_graphs) the forward and backward are replayed from a CUDA graph.
    Returns device tensors, not synced: the summed loss, the confusion counts, and whether the
    step was skipped for a non-finite loss or gradient."""
    options = options or {}
    weights, rdrop, fgm = options.get("weights"), options.get("rdrop", 0.0), options.get("fgm")
    kd = options.get("kd")

    def sync_unless(skip):  # DDP all-reduces the gradients in the step's last backward only
        return getattr(model, "no_sync", contextlib.nullcontext)() if skip else (
            contextlib.nullcontext())

    def gradients(pieces):
        loss_sum, confusion = 0.0, 0
        finite = torch.ones((), dtype=torch.bool, device=pieces[0]["labels"].device)
        for i, batch in enumerate(pieces):
            last = i == len(pieces) - 1
            with sync_unless(not last or fgm):
                loss, logits = forward_loss(model, batch, precision, weights, rdrop, kd)
                backward(loss * world_size / step_size, scaler)
            if fgm:
                embeddings, epsilon = fgm
                with sync_unless(not last), fgm_attack(embeddings, epsilon):
                    adversarial_loss, _ = forward_loss(model, batch, precision, weights, rdrop,
                                                       kd)
                    backward(adversarial_loss * world_size / step_size, scaler)
                finite &= torch.isfinite(adversarial_loss)
            finite &= torch.isfinite(loss)
            loss_sum += loss.detach()
            confusion += confusion_counts(batch["labels"], logits.detach())
        return loss_sum, confusion, clip_gradients(optimizer, scaler, max_grad_norm, finite)

    if graphs:
        loss_sum, confusion, skipped = graphs(lambda batch: gradients([batch]), pieces[0],
                                                 model.training)
    else:
        loss_sum, confusion, skipped = gradients(pieces)
    apply_update(optimizer, scaler, skipped, keep_grads=graphs is not None)
    return loss_sum, confusion, skipped


def cuda_graphs(args, device, world_size, accumulation, precision):
    """With --cuda_graphs, a CudaGraphSteps, once this run is known to be one that can replay its
    steps; else None."""
    if not args.cuda_graphs:
        return None
    unfit = {"a GPU (--device cuda)": device.type != "cuda",
             "one process, not torchrun": world_size > 1,
             "one micro-batch per step (no smaller --per_device_batch_size)": accumulation > 1,
             "bf16 or fp32 (fp16's loss scaling decides on the host)": precision == "fp16",
             "no --adversarial fgm": args.adversarial != "none",
             "no --compile": args.compile}
    needs = [need for need, missing in unfit.items() if missing]
    if needs:
        raise UserError(f"--cuda_graphs needs {'; '.join(needs)}")
    return CudaGraphSteps()


def evaluate(model, ids, labels, args, rank, world_size, device, precision):
    """Mean loss, accuracy and macro-F1 on the eval file; each process predicts a share."""
    mine = range(rank, len(ids), world_size)
    model.eval()
    logits = predict_logits(model, [ids[i] for i in mine], args.eval_batch_size, device,
                            AMP_DTYPES[precision])
    model.train()
    golds = torch.tensor([labels[i] for i in mine], dtype=torch.long)  # long even if empty
    loss = all_reduce(F.cross_entropy(logits, golds, reduction="sum").to(device))
    confusion = all_reduce(confusion_counts(golds, logits).to(device))
    result = scores(confusion.view(len(LABELS), -1).cpu().numpy())
    result["loss"] = loss.item() / len(ids)
    return result


def main(argv=None):
    args = parse_args(argv)
    rank, world_size, device = setup_processes(args.device)
    finished = False
    try:
        finished = train(args, rank, world_size, device)
    finally:
        close_processes(finished)


def train(args, rank, world_size, device):
    """The run, top to bottom; True when it finished, False when stopped early for --resume."""
    is_main = rank == 0
    prepare_output_dir(args)
    setup_logging(args.output_dir, is_main)
    log.info("arguments: %s", json.dumps(vars(args), ensure_ascii=False))
    state = load_training_state(args, ESSENTIAL_ARGS, log) if args.resume else None
    last_dir, best_dir = (os.path.join(args.output_dir, name) for name in ("last", "best"))

    # Data first: a bad record stops the run before a model is downloaded or built.
    train_records = read_split(args.train_file, args, drop_empty=True)
    if args.folds > 1:
        train_records, eval_records = held_out_fold(
            train_records, [r.label for r in train_records], args.folds, args.fold, args.seed)
        eval_source = f"fold {args.fold} of {args.folds} of {', '.join(args.train_file)}"
        log.info("%s: %d posts held out to pick the best epoch", eval_source, len(eval_records))
    else:
        eval_records = read_split(args.eval_file, args, drop_empty=False)
        eval_source = ", ".join(args.eval_file)
    if args.init_from:
        check_labels(args.init_from)
    unlabelled = read_corpus(args.unlabelled, log=log.warning, flag="--unlabelled",
                             use="training (through the teacher)") if args.unlabelled else []
    if unlabelled:  # an eval post learnt through the teacher would make eval scores optimistic
        known = {r.content for r in train_records + eval_records}
        kept = [text for text in unlabelled if text not in known]
        (log.info if kept else log.warning)(
            "unlabelled: %d of %d posts kept; the rest are training or eval posts", len(kept),
            len(unlabelled))
        unlabelled = kept
    posts = posts_fingerprint([(r.content, r.label) for r in train_records + eval_records],
                              unlabelled)
    refuse_changed_posts(state, posts)
    if args.student_layers and not (state or args.from_scratch):
        check_depth(args.model_name, args.student_layers)
    precision = choose_precision(args.precision, device)
    if args.teacher:  # before the seed: the teacher's run leaves the student's init unchanged
        log_probs, teachers = teacher_targets(
            args.teacher, [r.content for r in train_records] + unlabelled, args.output_dir,
            device, precision, is_main, log, began_with=state and state.get("teachers"))
        teacher = soft_targets(log_probs, args.kd_temperature)
    torch.manual_seed(args.seed)
    if state:
        model, tokenizer = load_checkpoint(last_dir, device)
    else:
        vocab = scratch_vocab(args, [r.content for r in train_records] + unlabelled, log.info)
        model, tokenizer = build_model(args.model_name, args.dropout, args.from_scratch,
                                       vocab, args.num_layers, args.hidden_size, log.info)
        if args.student_layers:
            log.info("student: layers %s of %s kept", keep_layers(model, args.student_layers),
                     args.model_name)
    # from_pretrained and load_checkpoint return a model in eval mode: without this, the first
    # epoch of a run from pretrained weights would train without dropout.
    model.to(device).train()
    refuse_cpu_marathon(args.device, device, model)
    check_max_length(model, args.max_length)
    train_ids, train_labels = tokenize(train_records, tokenizer, args.max_length)
    eval_ids, eval_labels = tokenize(eval_records, tokenizer, args.max_length)
    if unlabelled:  # at the end, in the order of the teacher's soft labels; -100: no gold label
        train_ids += encode(tokenizer, unlabelled, args.max_length)
        train_labels += [-100] * len(unlabelled)

    # Steps: --batch_size posts each, dealt to the processes, by gradient accumulation if need be.
    per_device, accumulation = step_plan(args.batch_size, args.per_device_batch_size, world_size)
    lengths = [len(ids) for ids in train_ids]

    def epoch_batches(epoch, processes=world_size):
        return step_batches(lengths, args.batch_size, args.seed + epoch, processes)

    steps_per_epoch = len(epoch_batches(0))
    if steps_per_epoch == 0:
        raise UserError(f"{', '.join(args.train_file)}: too few posts for a step of "
                        f"{args.batch_size}")

    graphs = cuda_graphs(args, device, world_size, accumulation, precision)
    clear_earlier_run(args, is_main)  # every input read: the earlier run can go
    options = {"weights": class_weights(args.class_weights, train_labels[:len(train_records)],
                                        device),
               "rdrop": args.rdrop,
               "fgm": (model.get_input_embeddings().weight, args.adv_epsilon)
               if args.adversarial == "fgm" else None,
               # alpha 0 is the plain run exactly: no KL term at all
               "kd": (args.kd_alpha, args.kd_temperature) if args.teacher and args.kd_alpha
               else None}
    if options["weights"] is not None:
        log.info("class weights: %s", ", ".join(
            f"{label} {w:.2f}" for label, w in zip(LABELS, options["weights"].tolist())))
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = linear_schedule(optimizer, args.warmup_epochs, args.epochs, steps_per_epoch)
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_f1": -1.0,
                "best_epoch": 0, "epochs_without_gain": 0}
    if state:
        resume_from_state(state, optimizer, scheduler, progress, args.lr, rank, world_size,
                          device, log)
        refuse_shifted_resume(state, progress, world_size,
                              lambda processes: epoch_batches(progress["epoch"], processes))
    scaler = make_grad_scaler(precision, device, state and state.get("scaler"))
    log.info("train: %d posts, eval: %d posts; %d steps per epoch of %d posts = %d process(es) "
             "x %d micro-batch(es) of up to %d; %s on %s%s", len(train_ids), len(eval_ids),
             steps_per_epoch, args.batch_size, world_size, accumulation, per_device, precision,
             describe_processes(world_size, device), ", CUDA graphs" if graphs else "")
    if state:
        log.info("resuming from %s at epoch %d, step %d", last_dir, progress["epoch"] + 1,
                 progress["step_in_epoch"])

    trained_model = wrap_for_training(model, args.compile, world_size, device)
    writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"),
                           purge_step=progress["global_step"] or None) if is_main else None
    num_workers = loader_workers(args.num_workers, device)
    collator = Collator(train_ids, train_labels, tokenizer.pad_token_id,
                        teacher if args.teacher else None, pad_multiple(device.type),
                        model.config.max_position_embeddings)

    def save_last():  # a collective: every process calls it
        save_training_state(model, tokenizer, last_dir, device, is_main, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "progress": progress,
            "args": vars(args), "posts": posts, "teachers": args.teacher and teachers})

    stop = StopRequest(log)
    running = RunningSums()
    try:
        while progress["epoch"] < args.epochs:
            if args.patience and progress["epochs_without_gain"] >= args.patience:
                log.info("no better eval macro-F1 for %d epochs: stopping early", args.patience)
                break
            epoch = progress["epoch"]
            batches = epoch_batches(epoch)
            loader = DataLoader([split_for_step(b, rank, world_size, accumulation)
                                 for b in batches[progress["step_in_epoch"]:]],
                                batch_size=None, collate_fn=collator.collate_pieces,
                                num_workers=num_workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator())  # leaves the global RNG to dropout
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main,
                       initial=progress["step_in_epoch"], total=steps_per_epoch, dynamic_ncols=True)
            for pieces in bar:
                pieces = [{k: v.to(device, non_blocking=True) for k, v in piece.items()}
                          for piece in pieces]
                try:
                    loss_sum, confusion, skipped = train_step(
                        trained_model, pieces, len(batches[progress["step_in_epoch"]]),
                        optimizer, scaler, precision, args.max_grad_norm, world_size, options,
                        graphs)
                except CaptureFailed as err:  # the step changed nothing: last/ is sound
                    save_last()
                    raise UserError(f"{err}; saved {last_dir}: continue with --resume, "
                                    "without --cuda_graphs") from err
                scheduler.step()
                running.add(loss=torch.where(skipped, 0.0, loss_sum), confusion=confusion,
                            posts=torch.where(skipped, 0, sum(len(p["labels"]) for p in pieces)),
                            skipped=skipped.long())
                progress["step_in_epoch"] += 1
                progress["global_step"] += 1
                step = progress["global_step"]
                if step % args.log_every == 0:  # the one host sync of log_every steps
                    sums = running.read()
                    lr = scheduler.get_last_lr()[0]
                    train_scores = scores(sums["confusion"].view(len(LABELS), -1).numpy())
                    mean_loss = sums["loss"].item() / max(1, sums["posts"].item())
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    if writer:
                        for name, value in (("loss", mean_loss), ("acc", train_scores["acc"]),
                                            ("macro_f1", train_scores["macro_f1"]), ("lr", lr)):
                            writer.add_scalar(f"Train/{name}", value, step)
                    stop_if_every_step_skipped(sums["skipped"].item(), world_size,
                                               args.log_every, step, save_last, last_dir)
                if stop.requested() or step == args.stop_after_steps:
                    bar.close()
                    stop_for_resume(stop, save_last, log, epoch, progress["step_in_epoch"],
                                    last_dir)
                    return False
            bar.close()
            if graphs:  # proof that the graphs were used, not only built
                log.info("CUDA graphs: %d captured, %d steps replayed so far", len(graphs.graphs),
                         graphs.replays)

            result = evaluate(model, eval_ids, eval_labels, args, rank, world_size, device,
                              precision)
            progress.update(epoch=epoch + 1, step_in_epoch=0)
            improved = result["macro_f1"] > progress["best_f1"]
            if improved:
                progress.update(best_f1=result["macro_f1"], best_epoch=epoch + 1,
                                epochs_without_gain=0)
            else:
                progress["epochs_without_gain"] += 1
            log.info("epoch %d: eval loss %.4f, acc %.4f, macro-F1 %.4f%s", epoch + 1,
                     result["loss"], result["acc"], result["macro_f1"],
                     " (best so far, saved)" if improved else "")
            if writer:
                for name in ("loss", "acc", "macro_f1"):
                    writer.add_scalar(f"Val/{name}", result[name], epoch + 1)
                writer.flush()
            if improved and is_main:
                summary = {"epoch": epoch + 1, "eval_file": eval_source,
                           "eval_acc": result["acc"], "eval_macro_f1": result["macro_f1"],
                           "eval_loss": result["loss"]}
                save_checkpoint(model, tokenizer, best_dir, extra=lambda folder: write_json(
                    os.path.join(folder, "eval_results.json"), summary))
            save_last()
    finally:
        stop.restore()
        if writer:
            writer.close()
    log.info("done: best eval macro-F1 %.4f at epoch %d, saved in %s", progress["best_f1"],
             progress["best_epoch"], best_dir)
    if args.tune_bias and is_main:
        tune_decision(best_dir, eval_ids, eval_labels, eval_source, args, device, precision)
    return True


def tune_decision(best_dir, eval_ids, eval_labels, eval_source, args, device, precision):
    """--tune_bias: per-class offsets fitted on the eval posts' probabilities under best/'s
    weights, saved beside them as best/decision.json."""
    model, _ = load_checkpoint(best_dir, device)
    probabilities = softmax(predict_logits(model, eval_ids, args.eval_batch_size, device,
                                           AMP_DTYPES[precision]).numpy())
    offsets, tuned_f1 = tune_offsets(probabilities, eval_labels)
    save_offsets(best_dir, offsets, eval_source)
    log.info("decision offsets (%s) raise eval macro-F1 from %.4f to %.4f; saved in %s",
             ", ".join(f"{label} {o:+.1f}" for label, o in zip(LABELS, offsets)),
             classification_scores(eval_labels, probabilities.argmax(-1))["macro_f1"], tuned_f1,
             os.path.join(best_dir, "decision.json"))


if __name__ == "__main__":
    run_cli(main)
