"""Why a post got its label: how much each piece of the cleaned post moved the probability of the
label the model gave it.

    explainer = make_explainer(predictor)          # predictor: ewect.prediction.load_predictor
    explanations = explainer.explain(cleaned_texts, label_ids, max_length=140)
    explanations[0].pairs()   # [[piece, score], ...]; the pieces concatenate to the text
                              # (to .cut_at where --max_length cut the post)

Pieces: each token's characters, up to where the next token starts, so that the pieces
concatenate to the cleaned text (a word piece such as '##ing' shows as the characters it came
from, an unknown character as itself); the word pieces of one Latin word or number, and the
characters of one [表情] emoji tag, are one piece. Scores are in units of the probability shown
for the label (calibrated by the checkpoint's temperature): positive pieces raised it.

Methods (chosen on the faithfulness measure in bench/explain.py; bench/RESULTS.md):
- "ig", for torch models: Integrated Gradients (Sundararajan et al. 2017; Captum's
  IntegratedGradients) on the word embeddings, from a baseline post whose every token is
  [MASK] ([CLS] and [SEP] kept), with STEPS Gauss-Legendre points. A piece's score is its tokens'
  attributions summed; the scores add up to p(post) - p(baseline) (completeness), within the
  quadrature's error, which .delta reports: a post that misses by more than TOLERANCE is done
  again with 4 times the points, up to MAX_STEPS.
- "occlusion", for models without gradients (--backend onnx, --int8): a piece's score is
  p(post) - p(post with the piece's tokens replaced by [MASK]), every variant of a batch of posts
  in one length-sorted pass.
- Ensembles: the mean of their members' scores (each member's own probability before the
  ensemble's temperature), when the members share one tokenizer; otherwise one error line.
"""
import re
from dataclasses import dataclass

import numpy as np

from .config import MAX_LENGTH
from .errors import UserError
from .prediction import pad, pads_left, softmax

METHODS = ("ig", "occlusion")
STEPS = 16  # Integrated Gradients' points: bench/explain.py, bench/RESULTS.md "Explanations"
TOLERANCE = 0.01  # of a probability: a post whose IG scores miss completeness by more is redone
MAX_STEPS = 256  # with 4x the points, up to this many
POSTS_PER_PASS = 8  # IG: posts whose STEPS interpolations go through the model at once
# A Weibo emoji tag as cleaning leaves it: [哈哈], [doge], [允悲]: one piece, not three.
EMOJI_TAG = re.compile(r"\[[^\[\]\s]{1,10}\]")


@dataclass
class Explanation:
    pieces: list  # the cleaned text (to cut_at), in order
    scores: list  # each piece's contribution to the label's probability
    cut_at: int = None  # characters explained when --max_length cut the post; None: all of it
    delta: float = 0.0  # IG: sum of scores - (p(post) - p(baseline)); 0 for occlusion

    def pairs(self, digits=4):
        return [[piece, round(float(score), digits)] for piece, score in
                zip(self.pieces, self.scores)]

    def top(self, k):
        """Indices of the k highest-scoring pieces, highest first."""
        return list(np.argsort(-np.asarray(self.scores, dtype=float), kind="stable")[:k])


@dataclass
class Tokenized:
    ids: list  # token ids as the model reads them (special tokens included)
    groups: list  # for each piece, the positions in ids of its tokens
    pieces: list  # each piece's text
    cut_at: int = None

    def without(self, pieces, replacement=None):
        """ids with the tokens of these pieces deleted, or replaced by a token id."""
        drop = {position for piece in pieces for position in self.groups[piece]}
        if replacement is None:
            return [t for position, t in enumerate(self.ids) if position not in drop]
        return [replacement if position in drop else t for position, t in enumerate(self.ids)]

    def only(self, pieces):
        """ids with every piece but these deleted (special tokens kept)."""
        return self.without([k for k in range(len(self.groups)) if k not in set(pieces)])


def offsets_tokenizer(tokenizer, max_length):
    """A copy of the checkpoint's tokenizer (transformers' fast class, or the tokenizers library's
    as the onnx backend loads it) that truncates at max_length, pads nothing and gives offsets."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length)
    return copy


def tokenize(tokenizer, texts, max_length=MAX_LENGTH):
    """Each text's Tokenized: the ids as ewect.data.encode gives them, and its pieces."""
    return [pieces_of(text, encoding) for text, encoding in
            zip(texts, offsets_tokenizer(tokenizer, max_length).encode_batch(list(texts)))]


def pieces_of(text, encoding):
    """Group a text's tokens into pieces (one Latin word or number, one emoji tag, else one
    token) and give each piece the characters from its first token to the next piece's."""
    in_tag = np.full(len(text) + 1, -1)
    for number, match in enumerate(EMOJI_TAG.finditer(text)):
        in_tag[match.start():match.end()] = number
    groups, starts, previous, previous_end = [], [], None, -1
    for position, (special, (start, end)) in enumerate(zip(encoding.special_tokens_mask,
                                                            encoding.offsets)):
        if special:
            continue
        latin = text[start:end].isascii() and text[start:end].isalnum()
        key = ("tag", in_tag[start]) if in_tag[start] >= 0 else "latin" if latin else position
        # a tag, or letters and digits glued together (word pieces: hello = hel ##lo), is one
        # piece; so is a token with no text of its own
        if groups and ((key == previous and (key != "latin" or start == previous_end))
                       or start <= starts[-1]):
            groups[-1].append(position)
        else:
            groups.append([position])
            starts.append(start)
        previous, previous_end = key, end
    cut_at = encoding.offsets[groups[-1][-1]][1] if encoding.overflowing and groups else None
    if not groups:  # nothing the tokenizer reads: the whole text, as a piece of no tokens
        return Tokenized(encoding.ids, [[]] if text else [], [text] if text else [], None)
    bounds = [0, *starts[1:], len(text) if cut_at is None else cut_at]
    return Tokenized(encoding.ids, groups,
                     [text[a:b] for a, b in zip(bounds, bounds[1:])], cut_at)


def label_probability(logits, targets, temperature):
    return softmax(logits, temperature)[np.arange(len(targets)), targets]


def baseline_token(tokenizer, pad_id):
    """The token that stands for "no text here": [MASK], which masked-LM pretraining taught the
    encoder to read as a character it cannot see, where the tokenizer has one; else [PAD]."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None and hasattr(tokenizer, "token_to_id"):  # the tokenizers library's class
        mask_id = tokenizer.token_to_id("[MASK]")
        mask_id = tokenizer.token_to_id("<mask>") if mask_id is None else mask_id
    return pad_id if mask_id is None else mask_id


class Occlusion:
    """p(post) - p(post with one piece's tokens replaced by baseline_token's), for any predictor
    that gives logits of token-id lists."""
    method = "occlusion"

    def __init__(self, tokenizer, logits, temperature, batch_size, replacement=None):
        """replacement: the token id a piece's tokens become, or None to delete them."""
        self.tokenizer, self.logits, self.replacement = tokenizer, logits, replacement
        self.temperature, self.batch_size = temperature, batch_size

    def explain_tokenized(self, posts, targets):
        variants, owners = [], []
        for number, post in enumerate(posts):
            variants += [post.ids] + [post.without([k], self.replacement)
                                      for k in range(len(post.groups))]
            owners += [number] * (len(post.groups) + 1)
        p = label_probability(self.logits(variants, self.batch_size),
                              np.asarray(targets)[owners], self.temperature)
        explanations, at = [], 0
        for post in posts:
            scores = p[at] - p[at + 1:at + 1 + len(post.groups)]
            explanations.append(Explanation(post.pieces, scores.tolist(), post.cut_at))
            at += len(post.groups) + 1
        return explanations


class IntegratedGradients:
    """Captum's IntegratedGradients on a torch classifier's word embeddings (passed as
    inputs_embeds, so nothing is hooked on the model, which the demo shares between requests),
    toward the calibrated probability of each post's label; in fp32 (gradients under bf16
    autocast miss completeness by far more than the quadrature does)."""
    method = "ig"

    def __init__(self, model, tokenizer, device, temperature, steps=STEPS):
        try:
            from captum.attr import IntegratedGradients as CaptumIntegratedGradients
        except ImportError:
            raise UserError("Integrated Gradients need the captum package: pip install -r "
                            "requirements.txt") from None

        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.temperature, self.steps, self.tolerance = temperature, steps, TOLERANCE
        self.pad_id = model.config.pad_token_id or 0
        self.baseline_id = baseline_token(tokenizer, self.pad_id)
        self.attributor = CaptumIntegratedGradients(self._probabilities)

    def _probabilities(self, embeddings, attention_mask):
        import torch

        logits = self.model(inputs_embeds=embeddings, attention_mask=attention_mask).logits
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def explain_tokenized(self, posts, targets):
        """Every post at self.steps points; those whose scores miss completeness by more than
        TOLERANCE again at 4 times as many, up to MAX_STEPS (a model so sure of itself that
        its probability jumps from 0 to 1 somewhere along the path)."""
        from .data import sorted_batches

        explanations, todo, steps = [None] * len(posts), range(len(posts)), self.steps
        while todo and steps <= MAX_STEPS:
            for batch in sorted_batches([len(posts[i].ids) for i in todo], POSTS_PER_PASS):
                chosen = [todo[i] for i in batch]
                for index, explanation in zip(chosen, self._attribute(
                        [posts[i] for i in chosen], [targets[i] for i in chosen], steps)):
                    explanations[index] = explanation
            todo = [i for i in todo if abs(explanations[i].delta) > self.tolerance]
            steps *= 4
        return explanations

    def _attribute(self, batch, targets, steps):
        import torch

        left = pads_left(self.model.config)
        ids, mask = (torch.from_numpy(a).to(self.device)
                     for a in pad([post.ids for post in batch], self.pad_id, left=left))
        baseline = torch.from_numpy(pad([post.without(range(len(post.groups)), self.baseline_id)
                                         for post in batch], self.pad_id, left=left)[0])
        embed = self.model.get_input_embeddings()
        with torch.enable_grad():
            attributions, delta = self.attributor.attribute(
                embed(ids).detach(), baselines=embed(baseline.to(self.device)).detach(),
                target=torch.tensor(targets, device=self.device),
                additional_forward_args=(mask,), n_steps=steps, method="gausslegendre",
                internal_batch_size=POSTS_PER_PASS * self.steps, return_convergence_delta=True)
        per_token = attributions.sum(-1).detach().float().cpu().numpy()
        if left:  # the posts' tokens are at the end of each row
            per_token = [row[len(row) - len(post.ids):] for row, post in zip(per_token, batch)]
        return [Explanation(post.pieces, [float(per_token[row][group].sum())
                                          for group in post.groups], post.cut_at,
                            float(delta[row]))
                for row, post in enumerate(batch)]


class Mean:
    """An ensemble's explanation: the mean of its members' scores over the same pieces."""

    def __init__(self, members):
        self.members, self.method = members, members[0].method
        self.tokenizer = members[0].tokenizer

    def explain_tokenized(self, posts, targets):
        each = [member.explain_tokenized(posts, targets) for member in self.members]
        return [Explanation(parts[0].pieces, np.mean([p.scores for p in parts], axis=0).tolist(),
                            parts[0].cut_at, float(np.mean([p.delta for p in parts])))
                for parts in zip(*each)]


class Explainer:
    """explain(cleaned_texts, label_ids, max_length): an Explanation per post."""

    def __init__(self, method):
        self.attribute, self.method = method, method.method

    def explain(self, cleaned_texts, targets, max_length=MAX_LENGTH):
        posts = tokenize(self.attribute.tokenizer, list(cleaned_texts), max_length)
        return self.attribute.explain_tokenized(posts, targets) if posts else []


def tokenizer_text(tokenizer):
    return getattr(tokenizer, "backend_tokenizer", tokenizer).to_str()


def member_method(predictor, method, temperature):
    """The attribution of one checkpoint's predictor: IG where it has gradients."""
    torch_model = getattr(predictor, "model", None)
    if method == "auto":
        method = "ig" if torch_model is not None and not predictor.int8 else "occlusion"
    if method == "ig":
        if torch_model is None or predictor.int8:
            raise UserError("--explain ig needs the torch backend without --int8 (it takes "
                            "gradients); use --explain occlusion")
        return IntegratedGradients(torch_model, predictor.tokenizer, predictor.device,
                                   temperature)
    return Occlusion(predictor.tokenizer, predictor.logits, temperature,
                     predictor.default_batch_size,
                     baseline_token(predictor.tokenizer, predictor.pad_id))


def make_explainer(predictor, method="auto"):
    """The explainer of a predictor from load_predictor: IG for torch models, occlusion for onnx
    and --int8 ones (or the method named), the mean of the members' for an ensemble."""
    members = getattr(predictor, "members", None)
    if members is None:
        return Explainer(member_method(predictor, method, predictor.temperature))
    if len({tokenizer_text(member.tokenizer) for member in members}) > 1:
        raise UserError("--explain with an ensemble needs members that share one tokenizer (the "
                        "mean of their scores is taken piece by piece); explain each model on "
                        "its own")
    return Explainer(Mean([member_method(member, method, 1.0) for member in members]))


METHOD_NAMES = {"ig": "Integrated Gradients", "occlusion": "occlusion"}
SHOWN = 0.1  # the sign line marks pieces that moved p by a tenth of the top piece's score or more


def display_width(text):
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def describe(explanation, label, method, top=5):
    """Lines for a terminal: the text over a line of signs (+ raised p(label), - lowered it, by a
    tenth of the top piece's score or more), then the top pieces with their scores."""
    scores = np.asarray(explanation.scores, dtype=float)
    largest = float(np.abs(scores).max()) if len(scores) else 0.0

    def sign(score):
        return ("+" if score >= SHOWN * largest > 0 else
                "-" if score <= -SHOWN * largest < 0 else " ")

    signs = "".join(sign(score) * display_width(piece)
                    for piece, score in zip(explanation.pieces, scores))
    lines = [f"why {label} ({METHOD_NAMES[method]}; each piece's change to p({label}), "
             f"{scores.sum():+.3f} in all):",
             "  " + "".join(explanation.pieces), "  " + signs.rstrip(),
             "  top: " + "  ".join(f"{explanation.pieces[i].strip() or repr(explanation.pieces[i])}"
                                   f" {scores[i]:+.3f}" for i in explanation.top(top))]
    if explanation.cut_at is not None:
        lines.append(f"  (--max_length cut the post at character {explanation.cut_at}; the rest "
                     "is not explained)")
    return lines
