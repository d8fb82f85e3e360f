"""Emotion shares of a file of posts ("23% angry"), corrected for the model's mistakes, with a 95%
interval and a warning when the correction cannot be trusted: inference.py --summary.

Counting the labels (classify and count) is biased whenever the file's mix of emotions differs
from the training posts'. The methods, named as QuaPy (Moreo et al. 2021) names them:
  cc       classify and count: the share of each predicted label
  pcc      the mean of the (calibrated) probabilities (Bella et al. 2010)
  acc      cc corrected by how often each true label is predicted as each label on labelled
           posts (Forman 2008): the shares p that best solve q = M p on the simplex
  pacc     the same with probabilities in place of labels (Bella et al. 2010)
  emq      EM re-weighting of the probabilities from the training shares (Saerens et al. 2002)
and one more, pcc_own: pcc of the model's own probabilities, before the temperature.
The labelled posts are the eval split's, saved with the checkpoint (ewect/calibration.py), or a
user's own (--calibration_file). acc, pacc and emq assume the posts of each emotion look to the
model as they did in those labelled posts: a change of mix alone. `shift_check` tests that on
each file: a mix of the labelled posts' per-label histograms of (predicted label, confidence)
is fitted to the file's, and the distance left is compared with what a file of that size drawn
from the labelled posts shows (a parametric bootstrap). When the file is further away than
chance and than MIN_DISTANCE, the summary warns and recommends pcc_own, which measurement showed
safest there; otherwise pacc, unless it would learn from fewer than MIN_LABELLED labelled posts
(bench/RESULTS.md, "Emotion shares").

The formulas are written here rather than called from QuaPy: QuaPy takes seconds to import and
runs its bootstrap in worker processes that do not repeat, where a resumed run's summary must
equal an uninterrupted one's. tests/test_shares.py checks them against QuaPy's.
"""
import numpy as np

from .config import LABELS
from .errors import UserError

METHODS = ("cc", "pcc", "acc", "pacc", "emq", "pcc_own")
PLAIN = "pcc_own"  # what is recommended where a correction is not
MIN_POSTS = 100  # fewer posts in a file or group: the plain estimate, flagged
MIN_LABELLED = 500  # fewer labelled posts: a correction learnt from them costs more than it
# corrects (bench/RESULTS.md, "Emotion shares": 100 or 200 mostly lose to the plain estimate)
REPLICATES = 200  # bootstrap replicates, for the interval and for the check
CONFIDENCE_BINS = 4  # the check's histogram: predicted label x this many confidence bins
SEED = 0
EM_TOLERANCE, EM_MAX_ITERATIONS = 1e-4, 1000  # QuaPy's EMQ


class Reference:
    """What the corrections learn from labelled posts: their calibrated probabilities, gold
    label ids and decided label ids, the training shares (for emq), where they came from, and
    the model's temperature (for pcc_own)."""

    def __init__(self, probabilities, golds, decided, training_shares, source, temperature=1.0):
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.golds = np.asarray(golds, dtype=np.int64)
        self.decided = np.asarray(decided, dtype=np.int64)
        self.training_shares = np.asarray(training_shares, dtype=np.float64)
        self.source, self.temperature = source, temperature

    def resampled(self, rng):
        index = rng.integers(0, len(self.golds), len(self.golds))
        return Reference(self.probabilities[index], self.golds[index], self.decided[index],
                         self.training_shares, self.source, self.temperature)


def saved_reference(calibration, temperature, offsets):
    """The Reference of a checkpoint's saved eval posts (its calibration.json's record),
    calibrated and decided as the posts of a file are."""
    from .calibration import with_temperature
    from .decision import decide

    probabilities = with_temperature(calibration["eval_probabilities"], temperature)
    return Reference(probabilities, calibration["eval_labels"],
                     decide(probabilities, offsets, temperature), calibration["training_shares"],
                     calibration["fitted_on"], temperature)


def one_hot(label_ids, width=len(LABELS)):
    return np.eye(width)[np.asarray(label_ids, dtype=np.int64)]


def class_conditional(golds, rows, width=len(LABELS)):
    """M with M[i, j] the mean of column i of `rows` over the posts of true label j (what QuaPy's
    getPteCondEstim gives): P(predicted i | true j) for one-hot rows. A label with no posts gets
    the identity's column, as in QuaPy."""
    matrix = np.eye(rows.shape[1], width)
    for label in range(width):
        mine = golds == label
        if mine.any():
            matrix[:, label] = rows[mine].mean(0)
    return matrix


def simplex_least_squares(matrix, target):
    """The shares p >= 0, sum 1, that minimise |matrix p - target|: non-negative least squares
    with the sum held to 1 by a heavily weighted extra row (QuaPy minimises the same norm with
    SLSQP; this is the same answer a hundred times faster, which the bootstrap needs)."""
    from scipy.optimize import nnls

    weight = 1e3
    system = np.vstack([matrix, weight * np.ones(matrix.shape[1])])
    shares, _ = nnls(system, np.append(target, weight))
    return shares / shares.sum()


def expectation_maximisation(training_shares, probabilities):
    """Saerens et al.'s EM, as QuaPy's EMQ.EM: the file's shares q, and its posts' posteriors
    re-weighted by q / training shares, updated in turn until q settles."""
    training = np.asarray(training_shares, dtype=np.float64).copy()
    if np.prod(training) == 0:  # a label absent in training: smoothed, as QuaPy does
        training = (training + EM_TOLERANCE) / (training + EM_TOLERANCE).sum()
    shares, previous = training.copy(), None
    for iteration in range(EM_MAX_ITERATIONS):
        weighted = shares / training * probabilities
        posteriors = weighted / weighted.sum(1, keepdims=True)
        shares = posteriors.mean(0)
        if (previous is not None and np.abs(shares - previous).mean() < EM_TOLERANCE
                and iteration > 10):
            break
        previous = shares
    return shares


def estimate(method, probabilities, decided, reference):
    """One method's shares (numpy, LABELS order) of the posts whose calibrated probabilities and
    decided label ids are given."""
    if method == "emq":
        return expectation_maximisation(reference.training_shares, probabilities)
    return from_means(method, one_hot(decided).mean(0), np.mean(probabilities, 0),
                      own_probabilities(probabilities, reference).mean(0), reference)


def from_means(method, label_shares, mean_probabilities, mean_own, reference):
    """Every method but emq needs only the file's share of each decided label, its mean
    probabilities and its mean probabilities before the temperature."""
    if method == "cc":
        return label_shares
    if method == "pcc":
        return mean_probabilities
    if method == PLAIN:
        return mean_own
    if method == "acc":
        return simplex_least_squares(
            class_conditional(reference.golds, one_hot(reference.decided)), label_shares)
    if method == "pacc":
        return simplex_least_squares(
            class_conditional(reference.golds, reference.probabilities), mean_probabilities)
    raise ValueError(f"unknown method {method}")


def own_probabilities(probabilities, reference):
    """The model's probabilities before its temperature: pcc_own's. The temperature was fitted
    on posts of the model's own domain; on posts that are less clear to it, flattening them
    further pulls pcc towards the training mix (bench/RESULTS.md, "Emotion shares")."""
    from .calibration import with_temperature

    return with_temperature(probabilities, 1 / reference.temperature).astype(np.float64)


def bootstrap(method, probabilities, decided, reference, rng, replicates=REPLICATES):
    """(replicates, 6) estimates of a method other than emq: each replicate resamples the file's
    posts (the sampling of the posts; as counts, so a million posts cost milliseconds) and the
    labelled posts (what a correction learnt from them)."""
    columns = np.ascontiguousarray(np.hstack(  # (18, posts): one row of numbers a column
        [one_hot(decided), probabilities, own_probabilities(probabilities, reference)]).T)
    posts, estimates = columns.shape[1], []
    for _ in range(replicates):
        counts = np.bincount(rng.integers(0, posts, posts), minlength=posts)
        means = columns @ counts.astype(np.float64) / posts  # BLAS: floats, contiguous rows
        estimates.append(from_means(method, *np.split(means, 3), reference.resampled(rng)))
    return np.array(estimates)


def cell_edges(reference):
    """The check's confidence bins: quantiles of the labelled posts' top probability."""
    confidence = reference.probabilities.max(1)
    return np.quantile(confidence, np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1])


def cells(probabilities, decided, edges):
    """Each post's cell: its decided label x the bin of its top probability."""
    return np.asarray(decided) * CONFIDENCE_BINS + np.searchsorted(edges,
                                                                   probabilities.max(1))


def cell_histograms(reference, edges):
    """H[c, j]: the share of the labelled posts of true label j that fall in cell c, for each
    label j the labelled posts have (a mix needs no column for one they lack)."""
    in_cells = one_hot(cells(reference.probabilities, reference.decided, edges),
                       len(LABELS) * CONFIDENCE_BINS)
    return np.stack([in_cells[reference.golds == label].mean(0)
                     for label in np.unique(reference.golds)], axis=1)


def mixture_distance(histograms, frequencies):
    """(Hellinger distance, mix): the best mix of the labelled posts' per-label histograms for a
    file's cell frequencies, and how far the file still is from it."""
    mixture = histograms @ simplex_least_squares(histograms, frequencies)
    return float(np.sqrt(0.5 * ((np.sqrt(frequencies) - np.sqrt(mixture)) ** 2).sum())), mixture


def shift_check(probabilities, decided, reference, rng, replicates=REPLICATES):
    """(distance, p-value) of the file against a change of mix alone. The null: a file of as
    many posts drawn from the fitted mix, measured against the histograms of resampled labelled
    posts, so that both sources of noise are in it."""
    edges = cell_edges(reference)
    histograms = cell_histograms(reference, edges)
    width = len(LABELS) * CONFIDENCE_BINS
    frequencies = np.bincount(cells(probabilities, decided, edges), minlength=width)
    frequencies = frequencies / frequencies.sum()
    distance, mixture = mixture_distance(histograms, frequencies)
    null = [mixture_distance(cell_histograms(reference.resampled(rng), edges),
                             rng.multinomial(len(decided), mixture / mixture.sum())
                             / len(decided))[0]
            for _ in range(replicates)]
    return distance, float((1 + np.sum(np.array(null) >= distance)) / (1 + replicates))


# The summary warns when the check's p-value is under WARN_BELOW and the distance at least
# MIN_DISTANCE: large files of the model's own domain can differ from its eval posts by more
# than chance, though not by as much as another domain's (bench/RESULTS.md, "Emotion shares":
# Hellinger distances' 90th percentiles up to 0.096 there, 10th from 0.117 for the other
# track's posts).
WARN_BELOW, MIN_DISTANCE = 0.01, 0.1


def summarize(probabilities, decided, reference, seed=SEED):
    """The summary of one file (or group): every method's shares, the recommended method and
    why, its 95% interval, and the check's warning. `probabilities`: calibrated, (posts, 6);
    `decided`: the label ids given to the posts. The recommendation is pacc, or PLAIN where a
    file has too few posts, the check warns, or there are too few labelled posts."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    decided = np.asarray(decided, dtype=np.int64)
    rng = np.random.default_rng(seed)
    posts = len(decided)
    shares = {method: estimate(method, probabilities, decided, reference) for method in METHODS}
    distance, p_value = shift_check(probabilities, decided, reference, rng)
    method, warning = PLAIN, ""
    if posts < MIN_POSTS:
        warning = (f"only {posts} posts: too few for a correction (fewer than {MIN_POSTS}); "
                   f"the plain estimate {PLAIN} is given")
        why = warning
    elif len(reference.golds) < MIN_LABELLED:
        why = (f"only {len(reference.golds)} labelled posts to learn a correction from (fewer "
               f"than {MIN_LABELLED}): the plain estimate {PLAIN} is given")
    elif p_value < WARN_BELOW and distance >= MIN_DISTANCE:
        warning = (f"the model sees these posts differently from the labelled posts of "
                   f"{reference.source} (distance {distance:.3f}, p {p_value:.3f}): more than "
                   f"their mix changed, so the corrections may not hold; {PLAIN} is "
                   f"recommended. {MIN_LABELLED} or more posts of this kind labelled by hand "
                   "(--calibration_file) let the corrections learn them")
        why = "the check warns"
    else:
        method = "pacc"
        why = f"the check finds a change of mix alone (p {p_value:.3f}): pacc corrects it"
    low_high = np.percentile(bootstrap(method, probabilities, decided, reference, rng),
                             [2.5, 97.5], axis=0).T
    return {"posts": posts, "method": method,
            "shares": {name: dict(zip(LABELS, np.round(values, 4).tolist()))
                       for name, values in shares.items()},
            "interval95": {label: np.round(bounds, 4).tolist()
                           for label, bounds in zip(LABELS, low_high)},
            "warning": warning, "why": why, "small": posts < MIN_POSTS,
            "check": {"distance": round(distance, 4), "p_value": round(p_value, 4)},
            "labelled_posts": reference.source}


# --- files: inference.py --summary, --group_by --------------------------------------------------

PERIODS = ("day", "week", "month")


def group_keys(values, period, where):
    """Each post's group: its --group_by value, or with a period the day ('2020-01-31'), week
    (its Monday's date) or month ('2020-01') of the time in it, in the time's own zone (the wall
    clock of the post): ISO 8601 with or without a zone ('2020-01-31 13:05', '…T13:05+08:00'),
    Weibo's 'Fri Jan 31 13:05:00 +0800 2020', 20200131, or Unix seconds or milliseconds (read as
    UTC). `where` names the file and column for the one line an unreadable time gets."""
    values = list(values)
    if period is None:
        return values
    import pandas as pd

    times = parse_times(pd.Series(values, dtype=str).str.strip())
    if times.isna().any():
        first = int(times.isna().to_numpy().argmax())
        raise UserError(f"{where}: post {first + 1}: {values[first]!r} is not a date or time "
                        f"(for --period {period})")
    if period == "week":
        times = times - pd.to_timedelta(times.dt.day_of_week, unit="D")
    return list(times.dt.strftime("%Y-%m" if period == "month" else "%Y-%m-%d"))


def parse_times(series):
    """Naive wall-clock times (NaT where unreadable) of a Series of text: all digits are
    yyyymmdd (8 of them) or Unix seconds (milliseconds from 1e11 on); other text is read as ISO
    8601 in one vectorised pass where it can be, else one by one, each keeping its own zone's
    wall clock."""
    import pandas as pd

    numbers = pd.to_numeric(series, errors="coerce")
    if numbers.notna().all():
        if (series.str.len() == 8).all():
            return pd.to_datetime(series, format="%Y%m%d", errors="coerce")
        return pd.to_datetime(numbers, unit="ms" if numbers.abs().max() >= 1e11 else "s",
                              errors="coerce")
    try:
        times = pd.to_datetime(series, errors="coerce", format="ISO8601")
        if times.dt.tz is not None:  # one zone for all: its wall clock
            times = times.dt.tz_localize(None)
    except (ValueError, TypeError):  # mixed zones: one by one
        times = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")
    missing = times.isna()
    if missing.any():
        times = times.astype(object)
        times[missing] = [wall_clock(text) for text in series[missing]]
        times = pd.to_datetime(times)
    return times


def wall_clock(text):
    """One time as text read by pandas (dateutil), its zone dropped; NaT if unreadable."""
    import pandas as pd

    try:
        time = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    return time.tz_localize(None) if time.tzinfo is not None else time


def summarize_groups(keys, probabilities, decided, reference):
    """One row per group, sorted by key as text (the dates of --period sort by time): posts,
    recommended method, its six shares and 95% intervals, whether the group is too small for a
    correction, and its warning."""
    names, which = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    rows = []
    for index, name in enumerate(names):
        mine = which == index
        summary = summarize(probabilities[mine], decided[mine], reference)
        shares = summary["shares"][summary["method"]]
        rows.append({"group": name, "posts": summary["posts"], "method": summary["method"],
                     **shares,
                     **{f"{label}_{end}": summary["interval95"][label][side]
                        for label in LABELS for side, end in enumerate(("low", "high"))},
                     "small": summary["small"], "warning": summary["warning"]})
    return rows


def plot_groups(rows, path, title):
    """A line chart of the six shares per group, each with its 95% interval as a band; groups
    too small for a correction are hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 3), 4.5))
    small = np.array([row["small"] for row in rows])
    for label in LABELS:
        share = np.array([row[label] for row in rows])
        line, = ax.plot(x, share, marker="o", label=label)
        ax.fill_between(x, [row[f"{label}_low"] for row in rows],
                        [row[f"{label}_high"] for row in rows], color=line.get_color(),
                        alpha=0.15)
        if small.any():
            ax.plot(x[small], share[small], "o", markerfacecolor="white",
                    color=line.get_color())
    ax.set_xticks(x, [row["group"] for row in rows], rotation=45 if len(rows) > 6 else 0,
                  ha="right" if len(rows) > 6 else "center")
    ax.set(ylim=(0, None), ylabel="share of posts", title=title)
    ax.legend(ncol=3, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shares_figure(summary):
    """A bar chart of the recommended method's six shares with their 95% intervals (the demo)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method = summary["method"]
    shares = np.array([summary["shares"][method][label] for label in LABELS])
    low, high = np.array([summary["interval95"][label] for label in LABELS]).T
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(LABELS, shares, yerr=[np.maximum(shares - low, 0), np.maximum(high - shares, 0)],
           capsize=4, color="tab:blue")
    ax.set(ylim=(0, None), ylabel="share of posts",
           title=f"{summary['posts']:,} posts: shares by {method}, with 95% intervals")
    fig.tight_layout()
    return fig


def describe(summary):
    """The summary in a few lines for the terminal."""
    method = summary["method"]
    lines = [f"shares of {summary['posts']:,} posts ({method}, 95% interval): " + ", ".join(
        f"{label} {summary['shares'][method][label]:.3f} "
        f"[{low:.3f}, {high:.3f}]" for label, (low, high) in summary["interval95"].items())]
    if summary["warning"]:
        lines.append(f"warning: {summary['warning']}")
    return "\n".join(lines)
