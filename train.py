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
epoch, save_pretrained: weights, config with id2label, tokenizer; calibration.json, the
temperature of its probabilities fitted on the eval posts (ewect/calibration.py); with
--tune_bias also decision.json), last/ (the same plus training_state.pt, everything --resume
needs; written after every epoch and on Ctrl-C/SIGTERM), tensorboard/ and train.log.
"""
import argparse
import contextlib
import functools
import logging
import os
import shlex
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ewect.calibration import CALIBRATION_FILE, calibrate, describe_calibration
from ewect.config import DATASETS, LABEL2ID, LABELS, dataset_files, dataset_output_dir
from ewect.data import (Collator, add_label_names_arg, clean_records, encode, held_out_fold,
                        pad_multiple, read_records, split_for_step, step_batches)
from ewect.decision import save_offsets, tune_offsets
from ewect.distill import check_depth, keep_layers, soft_targets, teacher_targets
from ewect.errors import (UserError, non_negative_float, non_negative_int, positive_float,
                          positive_int, run_cli, script_help)
from ewect.loss import AUTO_WEIGHT_CAP, class_weights, class_weights_arg, fgm_attack, make_loss
from ewect.metrics import classification_scores, confusion_counts, scores
from ewect.model_card import write_model_card
from ewect.mlm import read_corpus, self_pretrained
from ewect.modeling import (AMP_DTYPES, build_model, check_labels, choose_precision,
                            load_checkpoint, save_checkpoint)
from ewect.prediction import (check_max_length, pads_left, position_limit, predict_logits,
                              softmax)
from ewect.training import (CaptureFailed, RunningSums, StopRequest, add_shared_args, all_reduce,
                            apply_update, backward, checkpoint_gradients, clear_earlier_run,
                            clip_gradients,
                            close_processes, cuda_graphs, describe_processes, loader_workers,
                            optimization, optimizer_step, posts_fingerprint,
                            refuse_changed_posts, refuse_cpu_marathon, refuse_shifted_resume,
                            setup_processes, start_run, step_plan, stop_for_resume,
                            stop_if_every_step_skipped, tensorboard, wrap_for_training,
                            write_json)
from ewect.vocab import scratch_vocab

# What a resumed run must share with the run it continues: the model, the data, the batches and
# the loss (the posts themselves are compared too). Anything else (epochs, lr, patience, device,
# precision, processes) may change on --resume, and is logged when it does.
ESSENTIAL_ARGS = ("model_name", "from_scratch", "vocab", "num_layers", "hidden_size", "dropout",
                  "train_file", "eval_file", "folds", "fold", "batch_size", "max_length", "seed",
                  "teacher", "unlabelled", "student_layers", "kd_alpha", "kd_temperature",
                  "class_weights", "rdrop", "adversarial", "adv_epsilon")
KD_DEFAULTS = {"kd_alpha": 0.5, "kd_temperature": 2.0}  # given without --teacher: refused
SCRATCH_LR = 5e-4  # --lr's default with --from_scratch: RESULTS, "Offline in one command"
# A model pretrain.py pretrained from scratch fine-tunes at the measured recipe's rate and length
# (train_offline.sh's; bench/RESULTS.md), not bert-base-chinese's 1e-5 for 30 epochs
SELF_PRETRAINED_LR, SELF_PRETRAINED_EPOCHS = 5e-4, 4
PUBLISHED_LR, PUBLISHED_EPOCHS = 1e-5, 30
log = logging.getLogger("train")


def parse_args(argv=None):
    """The command line; every flag is explained in docs/training.md."""
    p = argparse.ArgumentParser(**script_help(__doc__))
    add_shared_args(p, "hub id or local folder of a pretrained model to fine-tune")
    p.add_argument("--dataset", default="usual", choices=DATASETS,
                   help="track whose files and output folder are the defaults (both: one model "
                        "on the two)")
    p.add_argument("--train_file", nargs="+",
                   help="training file(s), read together (default: the --dataset's)")
    p.add_argument("--eval_file", nargs="+",
                   help="file(s) whose posts pick the best epoch (default: the --dataset's)")
    p.add_argument("--output_dir",
                   help="where best/, last/ and logs go (default: workspace/wb, wb_virus or "
                        "wb_both, by --dataset)")
    p.add_argument("--lr", type=non_negative_float,
                   help=f"peak learning rate of AdamW (default: {PUBLISHED_LR:g}; {SCRATCH_LR:g} "
                        f"with --from_scratch or a --model_name that pretrain.py pretrained from "
                        "scratch)")
    p.add_argument("--epochs", type=positive_int,
                   help=f"training epochs (default: {PUBLISHED_EPOCHS}; {SELF_PRETRAINED_EPOCHS} "
                        "for a --model_name that pretrain.py pretrained from scratch)")
    p.add_argument("--patience", type=non_negative_int, default=0,
                   help="stop after this many epochs without a better eval macro-F1 (0: never)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="skip and count unusable records instead of stopping")
    add_label_names_arg(p)
    p.add_argument("--init_from", metavar="DIR",
                   help="a checkpoint of this script to go on training, e.g. usual -> virus")
    p.add_argument("--folds", type=positive_int, default=1,
                   help="K > 1: train on K-1 stratified parts of the training files, pick the "
                        "epoch on part --fold")
    p.add_argument("--fold", type=positive_int, default=1, help="which part is held out, 1..K")
    p.add_argument("--class_weights", type=class_weights_arg, default="none",
                   help=f"cross-entropy class weights: none, auto (inverse frequency, capped at "
                        f"{AUTO_WEIGHT_CAP:g}) or six numbers in label order")
    p.add_argument("--adversarial", choices=["none", "fgm"], default="none",
                   help="fgm: a second pass with the word embeddings moved along their gradient")
    p.add_argument("--adv_epsilon", type=positive_float, default=1.0,
                   help="FGM's step: the norm of the word embeddings' move")
    p.add_argument("--rdrop", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="R-Drop: each post twice, plus ALPHA x the two passes' symmetric KL "
                        "(0: off)")
    p.add_argument("--cuda_graphs", action="store_true",
                   help="replay each step from a CUDA graph: one GPU, bf16 or fp32, no "
                        "accumulation, FGM or --compile (experimental)")
    p.add_argument("--tune_bias", action="store_true",
                   help="fit per-class logit offsets on the eval posts into best/decision.json")
    p.add_argument("--teacher", nargs="+", metavar="DIR",
                   help="distil from these checkpoints of this script (several: their mean)")
    p.add_argument("--kd_alpha", type=float,
                   help=f"weight of the teacher's term, 1 - alpha the gold labels' "
                        f"(default: {KD_DEFAULTS['kd_alpha']})")
    p.add_argument("--kd_temperature", type=positive_float,
                   help=f"softmax temperature of the teacher's term "
                        f"(default: {KD_DEFAULTS['kd_temperature']})")
    p.add_argument("--unlabelled", nargs="+", metavar="FILE",
                   help="with --teacher: more posts, learnt from its soft labels alone")
    p.add_argument("--student_layers", type=positive_int, metavar="K",
                   help="keep K evenly spaced layers of --model_name, first and last included")
    args = p.parse_args(argv)
    if args.cuda_graphs and args.gradient_checkpointing:  # recomputation inside a captured graph
        p.error("--cuda_graphs and --gradient_checkpointing: choose one (checkpointing is for "
                "memory, CUDA graphs for small fast steps)")
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
    own_model = not args.from_scratch and self_pretrained(args.model_name)
    if args.lr is None:
        args.lr = (SCRATCH_LR if args.from_scratch else SELF_PRETRAINED_LR if own_model
                   else PUBLISHED_LR)
    if args.epochs is None:
        args.epochs = SELF_PRETRAINED_EPOCHS if own_model else PUBLISHED_EPOCHS
    args.train_file = args.train_file or dataset_files(args.dataset, "train")
    args.eval_file = args.eval_file or dataset_files(args.dataset, "eval")
    args.output_dir = args.output_dir or dataset_output_dir(args.dataset)
    return args


# --- The data ---------------------------------------------------------------------------------

Data = namedtuple("Data", "train eval eval_source unlabelled fingerprint")


def read_data(args, state):
    """The run's posts: training and eval records (the eval ones a held-out fold with --folds),
    where the eval posts come from, --unlabelled's texts less any training or eval post, and a
    fingerprint of them all, checked against a resumed run's."""
    train_records = read_split(args.train_file, args, drop_empty=True)
    if args.folds > 1:
        train_records, eval_records = held_out_fold(
            train_records, [r.label for r in train_records], args.folds, args.fold, args.seed)
        eval_source = f"fold {args.fold} of {args.folds} of {', '.join(args.train_file)}"
        log.info("%s: %d posts held out to pick the best epoch", eval_source, len(eval_records))
    else:
        eval_records = read_split(args.eval_file, args, drop_empty=False)
        eval_source = ", ".join(args.eval_file)
    unlabelled = read_corpus(args.unlabelled, log=log.warning, flag="--unlabelled",
                             use="training (through the teacher)") if args.unlabelled else []
    if unlabelled:  # an eval post learnt through the teacher would make eval scores optimistic
        known = {r.content for r in train_records + eval_records}
        kept = [text for text in unlabelled if text not in known]
        (log.info if kept else log.warning)(
            "unlabelled: %d of %d posts kept; the rest are training or eval posts", len(kept),
            len(unlabelled))
        unlabelled = kept
    fingerprint = posts_fingerprint([(r.content, r.label) for r in train_records + eval_records],
                                    unlabelled)
    refuse_changed_posts(state, fingerprint)
    return Data(train_records, eval_records, eval_source, unlabelled, fingerprint)


def read_split(paths, args, drop_empty):
    """Validated records of the files, one after another, cleaned again (idempotent, about a
    second), so that a raw file is read exactly as its cleaned copy."""
    records = [record for path in paths for record in read_records(
        path, skip_bad_records=args.skip_bad_records, log=log.warning,
        label_names=args.label_names)]
    return clean_records(records, drop_empty)


def tokenize(data, tokenizer, max_length):
    """(train ids, train labels, eval ids, eval labels): every post tokenized once for the run;
    --unlabelled's after the training posts, as the teacher's labels are, with no label: -100."""
    train_labels = [LABEL2ID[r.label] for r in data.train] + [-100] * len(data.unlabelled)
    return (encode(tokenizer, [r.content for r in data.train] + data.unlabelled, max_length),
            train_labels, encode(tokenizer, [r.content for r in data.eval], max_length),
            [LABEL2ID[r.label] for r in data.eval])


# --- The model, the loss and the step ---------------------------------------------------------

def check_starting_model(args, state):
    """--init_from is a six-label classifier, and --model_name has --student_layers' layers."""
    if args.init_from:
        check_labels(args.init_from)
    if args.student_layers and not (state or args.from_scratch):
        check_depth(args.model_name, args.student_layers)


def load_model(args, state, texts, proc):
    """(model, tokenizer) in train mode on the device: last/ on --resume, else --model_name
    (cut to --student_layers) or with --from_scratch a random BERT on --vocab or a vocabulary
    built from `texts`; checked to fit the device and --max_length."""
    if state:
        model, tokenizer = load_checkpoint(os.path.join(args.output_dir, "last"), proc.device)
    else:
        vocab = scratch_vocab(args, texts, log.info)
        model, tokenizer = build_model(args.model_name, args.dropout, args.from_scratch,
                                       vocab, args.num_layers, args.hidden_size, log.info)
        if args.student_layers:
            log.info("student: layers %s of %s kept", keep_layers(model, args.student_layers),
                     args.model_name)
    refuse_cpu_marathon(args.device, proc.device, model)
    check_max_length(model, args.max_length)
    checkpoint_gradients(model, args.gradient_checkpointing)
    # from_pretrained and load_checkpoint return a model in eval mode: without this, the first
    # epoch of a run from pretrained weights would train without dropout.
    return model.to(proc.device).train(), tokenizer


def accumulate_gradients(model, pieces, step_size, loss, scaler=None, world_size=1, fgm=None):
    """The gradient of the mean loss over all step_size posts of a step, from this process's
    micro-batches (`pieces`), however the step is split across processes (DDP averages over them)
    and micro-batches. fgm: (word embeddings, epsilon) for FGM's second pass. Returns device
    tensors, not synced: the summed loss, the confusion counts, and whether every loss was
    finite."""
    def sync_unless(skip):  # DDP all-reduces the gradients in the step's last backward only
        return getattr(model, "no_sync", contextlib.nullcontext)() if skip else (
            contextlib.nullcontext())

    loss_sum, confusion = 0.0, 0
    finite = torch.ones((), dtype=torch.bool, device=pieces[0]["labels"].device)
    for i, batch in enumerate(pieces):
        last = i == len(pieces) - 1
        with sync_unless(not last or fgm):
            value, logits = loss(model, batch)
            backward(value * world_size / step_size, scaler)
        if fgm:
            with sync_unless(not last), fgm_attack(*fgm):
                adversarial, _ = loss(model, batch)
                backward(adversarial * world_size / step_size, scaler)
            finite &= torch.isfinite(adversarial)
        finite &= torch.isfinite(value)
        loss_sum += value.detach()
        confusion += confusion_counts(batch["labels"], logits.detach())
    return loss_sum, confusion, finite


def train_step(model, pieces, step_size, loss, optimizer, scaler, max_grad_norm, world_size=1,
               fgm=None):
    """One optimizer step: accumulate_gradients, then clip and step (skipped on the device when
    a loss or gradient is not finite). Returns device tensors, not synced: the summed loss, the
    confusion counts, and whether the step was skipped."""
    loss_sum, confusion, finite = accumulate_gradients(model, pieces, step_size, loss, scaler,
                                                       world_size, fgm)
    return loss_sum, confusion, optimizer_step(optimizer, scaler, max_grad_norm, finite)


def graphed_train_step(graphs, model, pieces, step_size, loss, optimizer, max_grad_norm):
    """train_step as --cuda_graphs runs it (one micro-batch, one process, no scaler, no FGM): the
    forward, backward and clipping replayed from the CUDA graph of the batch's shape and the
    model's mode, the optimizer's step eager, the gradients left where the graphs write them."""
    def gradients(batch):
        loss_sum, confusion, finite = accumulate_gradients(model, [batch], step_size, loss)
        return loss_sum, confusion, clip_gradients(optimizer, None, max_grad_norm, finite)

    loss_sum, confusion, skipped = graphs(gradients, pieces[0], model.training)
    apply_update(optimizer, None, skipped, keep_grads=True)
    return loss_sum, confusion, skipped


def evaluate(model, ids, labels, args, proc, precision):
    """Mean loss, accuracy and macro-F1 on the eval posts; each process predicts a share."""
    mine = range(proc.rank, len(ids), proc.world_size)
    model.eval()
    logits = predict_logits(model, [ids[i] for i in mine], args.eval_batch_size, proc.device,
                            AMP_DTYPES[precision])
    model.train()
    golds = torch.tensor([labels[i] for i in mine], dtype=torch.long)  # long even if empty
    loss = all_reduce(F.cross_entropy(logits, golds, reduction="sum").to(proc.device))
    confusion = all_reduce(confusion_counts(golds, logits).to(proc.device))
    result = scores(confusion.view(len(LABELS), -1).cpu().numpy())
    result["loss"] = loss.item() / len(ids)
    return result


# --- The run ----------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    proc = setup_processes(args.device)
    finished = False
    try:
        finished = train(args, proc)
    finally:
        close_processes(finished)


def train(args, proc):
    """The run: setup, loop, finish. True when it finished, False when stopped for --resume."""
    # Setup. The data first: a bad record stops the run before a model is downloaded or built.
    state = start_run(args, ESSENTIAL_ARGS, proc)
    if not args.from_scratch and self_pretrained(args.model_name):
        log.info("%s was pretrained from scratch by pretrain.py: fine-tuning at lr %g for %d "
                 "epochs (the measured recipe's defaults for such a model; --lr and --epochs "
                 "change them)", args.model_name, args.lr, args.epochs)
    data = read_data(args, state)
    check_starting_model(args, state)  # before a teacher labels anything
    texts = [r.content for r in data.train] + data.unlabelled
    precision = choose_precision(args.precision, proc.device)
    teacher = teachers = None
    if args.teacher:  # before the seed: the teacher's run leaves the student's init unchanged
        log_probs, teachers = teacher_targets(args.teacher, texts, args.output_dir, proc,
                                              precision, state and state.get("teachers"))
        teacher = soft_targets(log_probs, args.kd_temperature)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args, state, texts, proc)
    train_ids, train_labels, eval_ids, eval_labels = tokenize(data, tokenizer, args.max_length)

    # Steps: --batch_size posts each, dealt to the processes, by gradient accumulation if need be.
    per_device, accumulation = step_plan(args.batch_size, args.per_device_batch_size,
                                         proc.world_size)
    lengths = [len(ids) for ids in train_ids]

    def epoch_batches(epoch, processes=proc.world_size):
        return step_batches(lengths, args.batch_size, args.seed + epoch, processes)

    steps_per_epoch = len(epoch_batches(0))
    if steps_per_epoch == 0:
        raise UserError(f"{', '.join(args.train_file)}: too few posts for a step of "
                        f"{args.batch_size}")
    graphs = cuda_graphs(args, proc, accumulation, precision)
    clear_earlier_run(args, proc.is_main)  # every input read: the earlier run can go
    # The loss, built once; FGM's second pass is the step's.
    weights = class_weights(args.class_weights, train_labels[:len(data.train)], proc.device,
                            log.info)
    kd = (args.kd_alpha, args.kd_temperature) if args.teacher and args.kd_alpha else None
    loss = make_loss(precision, weights, args.rdrop, kd)  # (kd_alpha 0: the plain run exactly)
    fgm = (model.get_input_embeddings().weight, args.adv_epsilon) if (
        args.adversarial == "fgm") else None
    optimizer, scheduler, scaler, progress, save_last = optimization(
        model, tokenizer, args, state, steps_per_epoch, proc, posts=data.fingerprint,
        teachers=teachers)
    if state:
        refuse_shifted_resume(state, progress, proc.world_size,
                              lambda processes: epoch_batches(progress.epoch, processes))
        log.info("resuming from %s at epoch %d, step %d", os.path.join(args.output_dir, "last"),
                 progress.epoch + 1, progress.step_in_epoch)
    log.info("train: %d posts, eval: %d posts; %d steps per epoch of %d posts = %d process(es) "
             "x %d micro-batch(es) of up to %d; %s on %s%s", len(train_ids), len(eval_ids),
             steps_per_epoch, args.batch_size, proc.world_size, accumulation, per_device,
             precision, describe_processes(proc), ", CUDA graphs" if graphs else "")
    trained_model = wrap_for_training(model, args.compile, proc)
    if graphs:  # step(pieces, step_size): one optimizer step
        step = functools.partial(graphed_train_step, graphs, trained_model, loss=loss,
                                 optimizer=optimizer, max_grad_norm=args.max_grad_norm)
    else:
        step = functools.partial(train_step, trained_model, loss=loss, optimizer=optimizer,
                                 scaler=scaler, max_grad_norm=args.max_grad_norm,
                                 world_size=proc.world_size, fgm=fgm)
    writer = tensorboard(args.output_dir, progress, proc)
    collator = Collator(train_ids, train_labels, tokenizer.pad_token_id, teacher,
                        pad_multiple(proc.device.type), position_limit(model.config),
                        pads_left(model.config))
    stop, running = StopRequest(), RunningSums()

    # The loop: the epoch's steps, then evaluation, best/ when it improved, and last/.
    try:
        while progress.epoch < args.epochs:
            if args.patience and progress.epochs_without_gain >= args.patience:
                log.info("no better eval macro-F1 for %d epochs: stopping early", args.patience)
                break
            batches = epoch_batches(progress.epoch)
            bar = tqdm(step_loader(batches[progress.step_in_epoch:], collator, accumulation,
                                   args.num_workers, proc),
                       desc=f"epoch {progress.epoch + 1}/{args.epochs}", disable=not proc.is_main,
                       initial=progress.step_in_epoch, total=steps_per_epoch, dynamic_ncols=True)
            for pieces in bar:
                pieces = [{k: v.to(proc.device, non_blocking=True) for k, v in piece.items()}
                          for piece in pieces]
                loss_sum, confusion, skipped = step(pieces, len(batches[progress.step_in_epoch]))
                scheduler.step()
                running.add(loss=torch.where(skipped, 0.0, loss_sum), confusion=confusion,
                            posts=torch.where(skipped, 0, sum(len(p["labels"]) for p in pieces)),
                            skipped=skipped.long())
                progress.step_in_epoch += 1
                progress.global_step += 1
                if progress.global_step % args.log_every == 0:  # the one host sync in log_every
                    sums = log_steps(running, scheduler, bar, writer, progress.global_step)
                    stop_if_every_step_skipped(sums["skipped"].item(), args.log_every, proc,
                                               progress, save_last)
                if stop.requested() or progress.global_step == args.stop_after_steps:
                    bar.close()
                    stop_for_resume(stop, save_last, progress)
                    return False
            bar.close()
            result = evaluate(model, eval_ids, eval_labels, args, proc, precision)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            improved = result["macro_f1"] > progress.best_f1
            progress.epochs_without_gain = 0 if improved else progress.epochs_without_gain + 1
            if improved:
                progress.best_f1, progress.best_epoch = result["macro_f1"], progress.epoch
            log_epoch(result, progress.epoch, improved, writer, graphs)
            if improved and proc.is_main:
                save_best(model, tokenizer, args, result, progress.epoch, data.eval_source)
            save_last(progress)
    except CaptureFailed as err:  # the step changed nothing: last/ is sound
        raise UserError(f"{err}; saved {save_last(progress)}: continue with --resume, without "
                        "--cuda_graphs") from err
    finally:
        stop.restore()
        if writer:
            writer.close()

    # Finish.
    best_dir = os.path.join(args.output_dir, "best")
    log.info("done: best eval macro-F1 %.4f at epoch %d, saved in %s", progress.best_f1,
             progress.best_epoch, best_dir)
    if proc.is_main:
        finish_best(best_dir, eval_ids, eval_labels, data, args, proc.device, precision)
    return True


def step_loader(batches, collator, accumulation, num_workers, proc):
    """The DataLoader of an epoch's steps from `batches` on: this process's micro-batches of each,
    collated (by --num_workers workers)."""
    return DataLoader([split_for_step(b, proc.rank, proc.world_size, accumulation)
                       for b in batches], batch_size=None, collate_fn=collator.collate_pieces,
                      num_workers=loader_workers(num_workers, proc.device),
                      pin_memory=proc.device.type == "cuda",
                      generator=torch.Generator())  # leaves the global RNG to dropout


def log_steps(running, scheduler, bar, writer, step):
    """Every --log_every steps: the running sums read (one host sync), the progress bar and
    TensorBoard updated; returns the sums."""
    sums = running.read()
    lr = scheduler.get_last_lr()[0]
    train_scores = scores(sums["confusion"].view(len(LABELS), -1).numpy())
    mean_loss = sums["loss"].item() / max(1, sums["posts"].item())
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
    if writer:
        for name, value in (("loss", mean_loss), ("acc", train_scores["acc"]),
                            ("macro_f1", train_scores["macro_f1"]), ("lr", lr)):
            writer.add_scalar(f"Train/{name}", value, step)
    return sums


def log_epoch(result, epoch, improved, writer, graphs):
    """The epoch's eval scores to the log and TensorBoard, and proof that CUDA graphs replayed."""
    if graphs:
        log.info("CUDA graphs: %d captured, %d steps replayed so far", len(graphs.graphs),
                 graphs.replays)
    log.info("epoch %d: eval loss %.4f, acc %.4f, macro-F1 %.4f%s", epoch, result["loss"],
             result["acc"], result["macro_f1"], " (best so far, saved)" if improved else "")
    if writer:
        for name in ("loss", "acc", "macro_f1"):
            writer.add_scalar(f"Val/{name}", result[name], epoch)
        writer.flush()


def save_best(model, tokenizer, args, result, epoch, eval_source):
    """OUTPUT_DIR/best: the checkpoint, with eval_results.json saying how it scored and a model
    card (README.md) saying how it was made."""
    summary = {"epoch": epoch, "eval_file": eval_source, "eval_acc": result["acc"],
               "eval_macro_f1": result["macro_f1"], "eval_loss": result["loss"]}

    def extra(folder):
        write_json(os.path.join(folder, "eval_results.json"), summary)
        write_model_card(folder, run_command(args), vars(args), summary)

    save_checkpoint(model, tokenizer, os.path.join(args.output_dir, "best"), extra=extra)


RUN_CONTROL = ("resume", "overwrite_output_dir", "stop_after_steps")  # not part of the recipe


def run_command(args):
    """The train.py command of these settings: the flags that differ from the defaults."""
    defaults, flags = vars(parse_args([])), []
    for key, value in vars(args).items():
        if value == defaults.get(key) or key in RUN_CONTROL:
            continue
        if key == "label_names" and isinstance(value, list):  # given as one comma-separated list
            value = ",".join(value)
        values = value if isinstance(value, list) else [] if value is True else [value]
        flags += [f"--{key}", *map(str, values)]
    return shlex.join(["python", "train.py", *flags])


def finish_best(best_dir, eval_ids, eval_labels, data, args, device, precision):
    """From the eval posts' probabilities under best/'s weights: the temperature that calibrates
    them (best/calibration.json) and, with --tune_bias, per-class offsets (best/decision.json)."""
    model, _ = load_checkpoint(best_dir, device)
    probabilities = softmax(predict_logits(model, eval_ids, args.eval_batch_size, device,
                                           AMP_DTYPES[precision]).numpy())
    record = calibrate(best_dir, probabilities, eval_labels,
                       [LABEL2ID[r.label] for r in data.train], data.eval_source)
    log.info("%s; saved in %s", describe_calibration(record),
             os.path.join(best_dir, CALIBRATION_FILE))
    if not args.tune_bias:
        return
    offsets, tuned_f1 = tune_offsets(probabilities, eval_labels)
    save_offsets(best_dir, offsets, data.eval_source)
    log.info("decision offsets (%s) raise eval macro-F1 from %.4f to %.4f; saved in %s",
             ", ".join(f"{label} {o:+.1f}" for label, o in zip(LABELS, offsets)),
             classification_scores(eval_labels, probabilities.argmax(-1))["macro_f1"], tuned_f1,
             os.path.join(best_dir, "decision.json"))


if __name__ == "__main__":
    run_cli(main)
