"""Emotion shares measured (inference.py --summary, ewect/shares.py): how far each method is from
the true shares, how often the recommended one's 95% interval covers them, how often the check
warns; and the calibration error before and after the temperature.

    python -m bench.shares --usual_model workspace/offline/wb/best \
        --virus_model workspace/offline/wb_virus/best            # ~10 min on a 2-core CPU
    python -m bench.shares --usual_model M --samples 10 --labelled 500   # a quick look
    python -m bench.shares --daily usual /tmp/daily.csv   # a week of posts, a new mix each day

For each model (trained on one track, calibrated on its eval posts), every setting is --samples
files of --sample_size posts drawn from labelled posts, whose true shares are known:
  same domain      its own track's test posts at random shares (QuaPy's APP protocol: shares
                   drawn uniformly from the simplex), corrections learnt from its eval posts
  other, natural   the other track's test posts, drawn at random (their own mix)
  other, random    the other track's test posts at random shares
The other-domain settings are measured with the corrections learnt from the model's eval posts,
and from N posts of the other track's eval split labelled by hand (--calibration_file), a new
draw of them for each file. Errors are the mean absolute error over the six shares, averaged
over the files; "covered" is the share of the (file, label) pairs whose 95% interval holds the
true share, and "all six" the share of files where every label's does. "warned" is how often
the check warns (the summary's rule: p-value and distance), "p <" how often its p-value alone
is under 0.01 and 0.05, and the distances' 10th to 90th percentiles show how far apart the
settings are, to choose the rule. Markdown, for RESULTS.
--daily TRACK FILE writes a CSV of that track's test posts over a week (date, content, gold),
each day at its own mix, for `inference.py --summary S.json --group_by date --period day`.
"""
import argparse
import time

import numpy as np
import torch

from bench.common import DEFAULT_DATA_DIR, command_line, describe_machine, load_posts
from ewect.calibration import calibration_scores, with_temperature
from ewect.config import LABELS
from ewect.decision import choose_offsets, decide
from ewect.shares import METHODS, MIN_DISTANCE, WARN_BELOW, Reference, saved_reference, summarize

TRACKS = {"usual": ("usual_test_labeled.txt", "usual_eval_labeled.txt"),
          "virus": ("virus_test_labeled.txt", "virus_eval_labeled.txt")}
OTHER = {"usual": "virus", "virus": "usual"}
P_VALUES = (0.01, 0.05)  # how often p alone is under each, beside the summary's own rule


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--usual_model", help="a checkpoint trained on the usual track (calibrated)")
    p.add_argument("--virus_model", help="a checkpoint trained on the virus track (calibrated)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="the six raw files")
    p.add_argument("--samples", type=int, default=100, help="files drawn per setting")
    p.add_argument("--sample_size", type=int, default=500, help="posts per file")
    p.add_argument("--labelled", type=int, nargs="*", default=[100, 200, 500, 2000],
                   help="hand-labelled posts of the other track for --calibration_file")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--daily", nargs=2, metavar=("TRACK", "FILE"),
                   help="write a week of TRACK's test posts, a new mix each day, to FILE; exit")
    return p.parse_args()


def write_daily(track, path, args, rng, days=7, per_day=400):
    """A CSV of `days` x `per_day` test posts of the track (date, content, gold): day d leans
    towards label d % 6, so each day's mix is another."""
    import pandas as pd

    texts, golds = load_posts(args.data_dir, TRACKS[track][0], drop_empty=False)
    golds, rows = np.asarray(golds), []
    for day in range(days):
        shares = np.full(6, 0.5 / 5)
        shares[day % 6] = 0.5
        index, _ = draw(golds, shares, per_day, rng)
        rows += [{"date": f"2020-03-{day + 1:02d} {8 + i % 12}:00", "content": texts[i],
                  "gold": LABELS[golds[i]]} for i in rng.permutation(index)]
    pd.DataFrame(rows).to_csv(path, index=False)
    print(f"wrote {path}: {days} days x {per_day} posts of {TRACKS[track][0]}")


class Labelled:
    """A labelled file's posts as a model sees them: calibrated probabilities, decided labels
    and the gold labels."""

    def __init__(self, predictor, offsets, data_dir, name):
        texts, self.golds = load_posts(data_dir, name, drop_empty=False)
        self.golds = np.asarray(self.golds)
        self.probabilities = predictor.predict(texts)
        self.decided = decide(self.probabilities, offsets, predictor.temperature)

    def reference(self, index, training_shares, source, temperature):
        return Reference(self.probabilities[index], self.golds[index], self.decided[index],
                         training_shares, source, temperature)


def draw(golds, shares, size, rng):
    """Indices of `size` posts at these shares (drawn with replacement within a label only when
    it has too few posts), and the shares they have."""
    counts = rng.multinomial(size, shares)
    index = np.concatenate([rng.choice(np.flatnonzero(golds == label), count,
                                       replace=count > (golds == label).sum())
                            for label, count in enumerate(counts)])
    return index, counts / size


def measure(files, posts, reference_of, rng):
    """Errors, coverage and warnings of summarize() over files (lists of indices into posts)."""
    errors = {method: [] for method in (*METHODS, "recommended")}
    covered, warned, p_values, distances = [], [], [], []
    for index, truth in files:
        summary = summarize(posts.probabilities[index], posts.decided[index], reference_of(rng),
                            seed=int(rng.integers(1 << 31)))
        for method in METHODS:
            errors[method].append(np.abs(np.array(list(summary["shares"][method].values()))
                                         - truth).mean())
        errors["recommended"].append(errors[summary["method"]][-1])
        low, high = np.array(list(summary["interval95"].values())).T
        covered.append((low - 1e-9 <= truth) & (truth <= high + 1e-9))
        warned.append(summary["why"] == "the check warns")
        p_values.append(summary["check"]["p_value"])
        distances.append(summary["check"]["distance"])
    return {"errors": {m: float(np.mean(v)) for m, v in errors.items()},
            "covered": float(np.mean(covered)), "all_six": float(np.mean(np.all(covered, 1))),
            "warned": float(np.mean(warned)), "distance": np.quantile(distances, [0.1, 0.9]),
            "warned_at": {p: float(np.mean(np.array(p_values) < p)) for p in P_VALUES}}


def row(model, setting, labelled, result):
    e = result["errors"]
    return (f"| {model} | {setting} | {labelled} | " + " | ".join(f"{e[m]:.4f}" for m in METHODS)
            + f" | {e['recommended']:.4f} | {result['covered']:.2f} | {result['all_six']:.2f} | "
            + f"{result['warned']:.2f} | "
            + " / ".join(f"{result['warned_at'][p]:.2f}" for p in P_VALUES)
            + " | {:.3f}–{:.3f} |".format(*result["distance"]))


def study(name, folder, track, args, rng):
    """The rows of one model."""
    from ewect.prediction import load_predictor

    predictor = load_predictor(folder, device="cpu")
    offsets, _ = choose_offsets([folder], "auto")
    calibration = predictor.calibration
    training = calibration["training_shares"]
    own_test, own_eval = (Labelled(predictor, offsets, args.data_dir, f) for f in TRACKS[track])
    other_test, other_eval = (Labelled(predictor, offsets, args.data_dir, f)
                              for f in TRACKS[OTHER[track]])
    before = calibration_scores(with_temperature(own_test.probabilities,
                                                 1 / predictor.temperature), own_test.golds)
    after = calibration_scores(own_test.probabilities, own_test.golds)
    print(f"{name}: temperature {predictor.temperature:.3f}; {TRACKS[track][0]} ECE "
          f"{before['ece']:.4f} -> {after['ece']:.4f}, NLL {before['nll']:.4f} -> "
          f"{after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}", flush=True)
    saved = saved_reference(calibration, predictor.temperature, offsets)

    def random_shares(golds):
        return [draw(golds, rng.dirichlet(np.ones(6)), args.sample_size, rng)
                for _ in range(args.samples)]

    def natural(golds):
        files = []
        for _ in range(args.samples):
            index = rng.choice(len(golds), args.sample_size, replace=False)
            files.append((index, np.bincount(golds[index], minlength=6) / args.sample_size))
        return files

    def hand_labelled(count):
        return lambda rng: other_eval.reference(
            rng.choice(len(other_eval.golds), min(count, len(other_eval.golds)), replace=False),
            training, f"{count} labelled posts", predictor.temperature)

    rows = [row(name, f"same domain ({track}_test), random shares", "eval",
                measure(random_shares(own_test.golds), own_test, lambda rng: saved, rng))]
    print(rows[-1], flush=True)
    for setting, files in ((f"other domain ({OTHER[track]}_test), natural shares",
                            natural(other_test.golds)),
                           (f"other domain ({OTHER[track]}_test), random shares",
                            random_shares(other_test.golds))):
        for labelled in ["eval", *args.labelled]:
            reference_of = (lambda rng: saved) if labelled == "eval" else hand_labelled(labelled)
            rows.append(row(name, setting, labelled,
                            measure(files, other_test, reference_of, rng)))
            print(rows[-1], flush=True)
    return rows


def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    if args.daily:
        return write_daily(*args.daily, args, rng)
    print(f"{command_line()}\n{describe_machine(torch.device('cpu'))}; "
          f"warning at p < {WARN_BELOW} and distance >= {MIN_DISTANCE}\n")
    header = ("| model | files | labelled posts | " + " | ".join(METHODS)
              + " | recommended | covered | all six | warned | p < "
              + " / ".join(map(str, P_VALUES)) + " | distance 10–90% |")
    rows, start = [], time.perf_counter()
    for name, folder, track in (("usual model", args.usual_model, "usual"),
                                ("virus model", args.virus_model, "virus")):
        if folder:
            rows += study(name, folder, track, args, rng)
    print(f"\n{header}\n|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
