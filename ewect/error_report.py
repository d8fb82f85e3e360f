"""test.py --errors N: the first hour of error analysis, as a Markdown report and its HTML twin.

    markdown, html = error_report(ids, texts, golds, predicted, probabilities, explainer, N, title)

For each confused pair of labels (gold -> predicted), most frequent first, the N mistakes the
model was most sure of (highest probability of the wrong label), each with its explanation
toward the label it gave (ewect/explain.py); then, per label, the characters and words that most
often carry it in correct predictions: among up to CORRECT_PER_LABEL correctly labelled posts of
each label (drawn with a fixed seed), how many have the character or word among their
TOP_PIECES highest-scoring ones (a word: jieba's segmentation, its characters' scores summed).
Markdown marks the top pieces in bold and reads well in a diff; the HTML colours every piece
(red raised the label's probability, blue lowered it; its score on hover).
"""
import html
import re
from collections import Counter, defaultdict

import numpy as np

from .config import LABELS
from .explain import EMOJI_TAG, METHOD_NAMES

CORRECT_PER_LABEL = 200
TOP_PIECES = 3
VOCABULARY_SHOWN = 10  # characters and words listed per label
# What Markdown would read as markup inside a line of a list item (a post never starts one)
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
CSS = ("body{font-family:sans-serif,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei';"
       "max-width:60em;margin:2em auto;line-height:1.6}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
       ".post{font-size:1.1em}.meta{color:#555;font-size:.9em}")


def escape_markdown(text):
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_post(explanation):
    """The post with its TOP_PIECES highest-scoring pieces (of positive score) in bold."""
    top = {i for i in explanation.top(TOP_PIECES) if explanation.scores[i] > 0}
    parts = []
    for i, piece in enumerate(explanation.pieces):
        core = piece.strip()
        parts.append(escape_markdown(piece) if i not in top or not core else
                     piece.replace(core, f"**{escape_markdown(core)}**", 1))
    text = "".join(parts).replace("****", "")  # adjacent bold pieces read as one
    return text + ("…" if explanation.cut_at is not None else "")


def html_post(explanation):
    """Every piece coloured by its score over the post's largest (red +, blue -)."""
    largest = max((abs(s) for s in explanation.scores), default=0.0) or 1.0
    spans = []
    for piece, score in zip(explanation.pieces, explanation.scores):
        alpha = abs(score) / largest
        colour = "220,38,38" if score > 0 else "37,99,235"
        spans.append(f'<span title="{score:+.4f}" style="background:rgba({colour},'
                     f'{alpha:.2f})">{html.escape(piece)}</span>')
    return "".join(spans) + ("…" if explanation.cut_at is not None else "")


def word_scores(explanation):
    """(word, score) of the explained text's words (jieba's, and each emoji tag whole), each the
    sum of the scores of the pieces that start in it."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    starts = np.cumsum([0] + [len(piece) for piece in explanation.pieces])[:-1]
    text = "".join(explanation.pieces)
    tags = [match.span() for match in EMOJI_TAG.finditer(text)]
    spans = tags + [(start, end) for _, start, end in jieba.tokenize(text)
                    if not any(a < end and start < b for a, b in tags)]
    scores = np.asarray(explanation.scores, dtype=float)
    return [(text[start:end], float(scores[(starts >= start) & (starts < end)].sum()))
            for start, end in sorted(spans) if text[start:end].strip()]


def top_units(units):
    """The TOP_PIECES units of highest positive score, each once."""
    ranked = sorted(((score, unit) for unit, score in units if unit.strip() and score > 0),
                    reverse=True)
    return list(dict.fromkeys(unit.strip() for _, unit in ranked))[:TOP_PIECES]


def confused_pairs(golds, predicted):
    """[(gold, predicted, count)] of the mistakes, most frequent first (then in label order)."""
    counts = Counter(zip(golds, predicted))
    return sorted(((g, p, n) for (g, p), n in counts.items() if g != p),
                  key=lambda pair: (-pair[2], pair[0], pair[1]))


def worst_mistakes(golds, predicted, probabilities, n):
    """{(gold, predicted): the indices of its n most confident mistakes, surest first}."""
    chosen = {}
    for gold, label, _ in confused_pairs(golds, predicted):
        indices = np.flatnonzero((golds == gold) & (predicted == label))
        order = np.argsort(-probabilities[indices, label], kind="stable")
        chosen[(gold, label)] = indices[order[:n]].tolist()
    return chosen


def correct_sample(golds, predicted, seed=0):
    """Up to CORRECT_PER_LABEL correctly labelled posts of each label, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    sample = []
    for label in range(len(LABELS)):
        indices = np.flatnonzero((golds == label) & (predicted == label))
        sample += sorted(rng.permutation(indices)[:CORRECT_PER_LABEL].tolist())
    return sample


def vocabulary(explanations, labels):
    """{label: ([(character, posts)], [(word, posts)])}: how many of the label's explained posts
    have each among their TOP_PIECES."""
    characters, words = defaultdict(Counter), defaultdict(Counter)
    for explanation, label in zip(explanations, labels):
        characters[label].update(top_units(zip(explanation.pieces, explanation.scores)))
        words[label].update(top_units(word_scores(explanation)))
    return {label: (characters[label].most_common(VOCABULARY_SHOWN),
                    words[label].most_common(VOCABULARY_SHOWN)) for label in range(len(LABELS))}


def error_report(ids, texts, golds, predicted, probabilities, explainer, n, title,
                 max_length=None):
    """(markdown, html) of the report; golds and predicted are label ids."""
    golds, predicted = np.asarray(golds), np.asarray(predicted)
    worst = worst_mistakes(golds, predicted, probabilities, n)
    correct = correct_sample(golds, predicted)
    shown = [i for indices in worst.values() for i in indices]
    chosen = shown + correct
    explained = explainer.explain([texts[i] for i in chosen], predicted[chosen],
                                  *([max_length] if max_length else []))
    explanation_of = dict(zip(shown, explained))
    words = vocabulary(explained[len(shown):], predicted[correct])

    mistakes = int((golds != predicted).sum())
    intro = (f"{len(golds)} posts, {mistakes} mistakes (accuracy "
             f"{1 - mistakes / max(len(golds), 1):.4f}). Each post is explained toward the label "
             f"the model gave it ({METHOD_NAMES.get(explainer.method, explainer.method)}: each "
             "piece's change to that label's probability).")
    md = [f"# {title}", "", intro + f" **Bold**: the {TOP_PIECES} pieces that raised it most.",
          "", "## Confusions, most frequent first", "", "| gold | predicted | posts | of gold |",
          "|---|---|---|---|"]
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(intro)} Red raised it, blue lowered it; hover for the score.</p>",
            "<h2>Confusions, most frequent first</h2><table><tr><th>gold</th><th>predicted</th>"
            "<th>posts</th><th>of gold</th></tr>"]
    for gold, label, count in confused_pairs(golds, predicted):
        share = f"{count / (golds == gold).sum():.1%}"
        md.append(f"| {LABELS[gold]} | {LABELS[label]} | {count} | {share} |")
        page.append(f"<tr><td>{LABELS[gold]}</td><td>{LABELS[label]}</td><td>{count}</td>"
                    f"<td>{share}</td></tr>")
    page.append("</table>")
    for (gold, label), indices in worst.items():
        heading = (f"{LABELS[gold]} → {LABELS[label]}: the {len(indices)} most confident of "
                   f"{int(((golds == gold) & (predicted == label)).sum())}")
        md += ["", f"## {heading}", ""]
        page.append(f"<h2>{html.escape(heading)}</h2><ol>")
        for i in indices:
            meta = (f"id {ids[i]}, p({LABELS[label]}) {probabilities[i, label]:.3f}, "
                    f"p({LABELS[gold]}) {probabilities[i, gold]:.3f}")
            md.append(f"1. {markdown_post(explanation_of[i])}  \n   <sub>{meta}</sub>")
            page.append(f"<li><span class='post'>{html_post(explanation_of[i])}</span><br>"
                        f"<span class='meta'>{html.escape(meta)}</span></li>")
        page.append("</ol>")
    heading = (f"What carries each label in correct predictions (up to {CORRECT_PER_LABEL} "
               f"posts a label; how many have it among their {TOP_PIECES} top pieces)")
    md += ["", f"## {heading}", "", "| label | posts | characters | words |", "|---|---|---|---|"]
    page.append(f"<h2>{html.escape(heading)}</h2><table><tr><th>label</th><th>posts</th>"
                "<th>characters</th><th>words</th></tr>")
    sampled = Counter(predicted[correct].tolist())
    for label, (chars, terms) in words.items():
        cells = [", ".join(f"{unit} {count}" for unit, count in units) for units in (chars, terms)]
        md.append(f"| {LABELS[label]} | {sampled[label]} | "
                  + " | ".join(escape_markdown(cell) for cell in cells) + " |")
        page.append(f"<tr><td>{LABELS[label]}</td><td>{sampled[label]}</td>"
                    + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    page.append("</table>")
    return "\n".join(md) + "\n", "\n".join(page) + "\n"
