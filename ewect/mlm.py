"""Masked-LM pretraining parts (BERT §3.1; Chinese-BERT-wwm's whole-word masking), below the loop.

read_corpus      unique cleaned posts of SMP2020-EWECT JSON, CSV and plain-text files
split_held_out   the deterministic held-out share of the corpus
encode_corpus    token ids, once, and for whole-word masking each token's jieba word
mask_tokens      choose 15% of eligible tokens (or of words); 80% [MASK], 10% random, 10% kept
MaskingCollator  pads a batch, masks it with a generator seeded per batch: reproducible, resumable;
                 collate_step masks a training step once and deals it out in micro-batches
masked_lm_loss   the vocabulary projection at the chosen positions only, cross-entropy in float32
build_mlm_model  a BertForMaskedLM from scratch or from a hub id or folder
"""
import logging
import os
import random

import numpy as np
import torch
import torch.nn.functional as F

from .cleaning import clean_text
from .data import encode, read_posts
from .errors import UserError
from .modeling import bert_config, forward_mask, from_pretrained, scratch_tokenizer

MASK_PROBABILITY = 0.15  # share of eligible tokens chosen (BERT §3.1)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen: [MASK], a random token; the rest stay


def read_corpus(paths, log=lambda message: print(f"warning: {message}"), flag="--corpus",
                use="pretraining"):
    """Unique cleaned posts of all files, in order; posts that cleaning empties are dropped.
    Each file is read as inference.py reads one (ewect.data.read_posts): one post per line, an
    SMP2020-EWECT JSON array (labels ignored), JSON Lines, or a CSV, TSV or Excel file with a
    `content` column. Warnings go to `log` (a logger's warning); `flag` and `use` name the files'
    command-line flag and what they are for in the messages."""
    texts = []
    for path in paths:
        if "test" in os.path.basename(path).lower():
            log(f"{path} looks like a test file: its text leaks into {use}, so "
                "scores on it will be optimistic")
        posts = [clean_text(text) for _, text in read_posts(path)]
        posts = [post for post in posts if post]
        if not posts:
            log(f"{path}: no usable text")
        texts += posts
    texts = list(dict.fromkeys(texts))  # exact duplicates out, first occurrence kept
    if not texts:
        raise UserError(f"{flag} {' '.join(paths)}: no usable text (every post is empty once "
                        "cleaned)")
    return texts


def split_held_out(texts, fraction=0.02, seed=0):
    """(train, held out): a random `fraction` of the texts (at least one when there are two or
    more), the same for the same seed; both keep the corpus order."""
    count = max(1, round(len(texts) * fraction)) if len(texts) > 1 else 0
    held = set(random.Random(seed).sample(range(len(texts)), count))
    return ([t for i, t in enumerate(texts) if i not in held],
            [t for i, t in enumerate(texts) if i in held])


def _jieba():
    try:
        import jieba
    except ImportError:
        raise UserError("--whole_word_mask needs jieba: pip install jieba") from None
    jieba.setLogLevel(logging.WARNING)  # else it logs its dictionary load on every first use
    return jieba


def encode_corpus(tokenizer, texts, max_length, whole_word_mask=False):
    """(token ids, word ids) of every text, tokenized once. Word ids number each token's jieba
    word within its text (0, 1, ...; -1 for [CLS]/[SEP]); a `##` wordpiece continues the word
    before it. None without whole_word_mask. jieba loads its dictionary on first use (~1 s)."""
    if not whole_word_mask:
        return encode(tokenizer, texts, max_length), None
    jieba = _jieba()
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length,
                        return_offsets_mapping=True, return_special_tokens_mask=True,
                        return_attention_mask=False, return_token_type_ids=False)
    all_word_ids = []
    for row, text in enumerate(texts):
        word_of_char = [0] * len(text)
        for number, (_, start, end) in enumerate(jieba.tokenize(text)):
            word_of_char[start:end] = [number] * (end - start)
        word_ids, last_word, count = [], None, -1
        for token, (start, _), special in zip(encoded.tokens(row), encoded["offset_mapping"][row],
                                              encoded["special_tokens_mask"][row]):
            if special:
                word_ids.append(-1)
                continue
            if not token.startswith("##") and word_of_char[start] != last_word:
                count += 1
            last_word = word_of_char[start]
            word_ids.append(count)
        all_word_ids.append(word_ids)
    return encoded["input_ids"], all_word_ids


def replacement_ids(tokenizer):
    """The ids a chosen token may become at random: the vocabulary without special and
    [unused…] tokens."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor(sorted(i for token, i in tokenizer.get_vocab().items()
                               if i not in special and not token.startswith("[unused")))


def mask_tokens(input_ids, eligible, word_ids=None, *, mask_id, replacement_ids, generator,
                probability=MASK_PROBABILITY):
    """(inputs, labels) for masked-LM: each eligible token is chosen with `probability` (with
    word_ids: each word is, and then all its eligible tokens are; a token's chance, hence the
    expected share of chosen tokens, stays `probability`, where Chinese-BERT-wwm picks words
    until exactly 15% of a sequence's tokens are chosen). Each chosen token independently
    becomes [MASK] (80%), a random token from replacement_ids (10%) or stays (10%). Labels hold
    the chosen tokens' ids and -100 elsewhere. All draws come from `generator` (CPU)."""
    rows, length = input_ids.shape
    if word_ids is None:  # every token its own word
        word_ids = torch.arange(length).expand(rows, length)
    # Word numbers are below the sequence length, so one draw per position covers every word.
    word_chosen = torch.rand(rows, length, generator=generator) < probability
    chosen = word_chosen.gather(1, word_ids.clamp(min=0)) & eligible
    labels = torch.where(chosen, input_ids, -100)
    action = torch.rand(rows, length, generator=generator)
    random_tokens = replacement_ids[torch.randint(len(replacement_ids), (rows, length),
                                                  generator=generator)]
    inputs = torch.where(chosen & (action < MASK_SHARE), mask_id, input_ids)
    inputs = torch.where(chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE),
                         random_tokens, inputs)
    return inputs, labels


class MaskingCollator:
    """Pads a batch of indices to its longest member and masks it: input_ids, attention_mask,
    labels (-100 where not chosen) and masked_positions (flat indices of the chosen tokens, so
    the loss needs no device sync to find them). Eligible are the tokens that are neither
    padding nor special ([CLS], [SEP], [UNK], [MASK], ...), as in transformers' collator.
    The masks of a batch depend only on the seed and the batch's indices: the same in any
    DataLoader worker, and after a resume. Pass seed + epoch to draw new masks each epoch.
    per_post: each post's masks depend on the seed and that post alone, whatever batch it is in
    (the held-out set: its loss is compared across epochs and --eval_batch_size)."""

    def __init__(self, input_ids, tokenizer, word_ids=None, seed=0,
                 probability=MASK_PROBABILITY, per_post=False):
        self.input_ids, self.word_ids, self.seed = input_ids, word_ids, seed
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.special_ids = torch.tensor(tokenizer.all_special_ids)
        self.replacement_ids = replacement_ids(tokenizer)
        self.probability, self.per_post = probability, per_post

    def __call__(self, indices):
        longest = max(len(self.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), longest), self.pad_id, dtype=torch.long)
        words = torch.full((len(indices), longest), -1, dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, :len(self.input_ids[i])] = torch.tensor(self.input_ids[i])
            if self.word_ids is not None:
                words[row, :len(self.word_ids[i])] = torch.tensor(self.word_ids[i])
        attention_mask = (torch.arange(longest) < torch.tensor(
            [len(self.input_ids[i]) for i in indices])[:, None]).long()
        if self.per_post:  # each row masked alone, at its own length
            inputs, labels = ids.clone(), torch.full_like(ids, -100)
            for row, i in enumerate(indices):
                length = len(self.input_ids[i])
                masked = self._mask(ids[row:row + 1, :length],
                                    attention_mask[row:row + 1, :length],
                                    words[row:row + 1, :length], [i])
                inputs[row, :length], labels[row, :length] = masked[0][0], masked[1][0]
        else:
            inputs, labels = self._mask(ids, attention_mask, words, indices)
        return _with_positions({"input_ids": inputs, "attention_mask": attention_mask,
                                "labels": labels})

    def _mask(self, ids, attention_mask, words, indices):
        """(inputs, labels) of mask_tokens, drawn from a generator seeded by seed and indices."""
        seed = np.random.SeedSequence([self.seed, *indices]).generate_state(1, np.uint64)[0]
        return mask_tokens(
            ids, attention_mask.bool() & ~torch.isin(ids, self.special_ids),
            words if self.word_ids is not None else None, mask_id=self.mask_id,
            replacement_ids=self.replacement_ids, probability=self.probability,
            generator=torch.Generator().manual_seed(int(seed)))

    def collate_step(self, step):
        """(micro-batches, chosen tokens in the whole step) of one training step, given as (the
        step's indices, this process's pieces of them; ewect.data.split_for_step). The step is
        masked as one batch and then cut into pieces, each padded to its own longest post: the
        masks do not depend on how a step is dealt to processes and micro-batches, and the
        count, which normalises the loss, needs no communication between processes."""
        indices, pieces = step
        whole = self(indices)
        row_of = {i: row for row, i in enumerate(indices)}
        micro_batches = []
        for piece in pieces:
            rows = torch.tensor([row_of[i] for i in piece])
            longest = int(whole["attention_mask"][rows].sum(1).max())
            micro_batches.append(_with_positions({
                name: whole[name][rows, :longest]
                for name in ("input_ids", "attention_mask", "labels")}))
        return micro_batches, len(whole["masked_positions"])


def _with_positions(batch):
    """masked_positions: the flat indices of the chosen tokens (see masked_lm_loss)."""
    batch["masked_positions"] = (batch["labels"].view(-1) != -100).nonzero().squeeze(1)
    return batch


def masked_lm_loss(model, batch):
    """(mean cross-entropy, chosen tokens, correctly predicted ones) of a masked-LM model on a
    MaskingCollator batch, as tensors. For the architectures whose head is `cls` on the encoder's
    output (BERT, ERNIE, MegatronBERT, RoFormer) the 21128-way projection runs only at the chosen
    positions: over all positions it costs more than the encoder on short posts; the others
    project every position. The positions' count comes from the host (masked_positions' shape),
    so nothing waits for the GPU; without masked_positions they are found from labels, which
    syncs on CUDA. Under DDP call it inside the wrapped module's forward: calling the encoder
    directly would skip DDP's gradient sync."""
    positions = batch.get("masked_positions")
    if positions is None:
        positions = (batch["labels"].view(-1) != -100).nonzero().squeeze(1)
    mask = forward_mask(model, batch["attention_mask"])
    targets = batch["labels"].view(-1)[positions]
    head = getattr(model, "cls", None)
    if head is not None:
        hidden = getattr(model, model.base_model_prefix)(
            input_ids=batch["input_ids"], attention_mask=mask, return_dict=True).last_hidden_state
        logits = head(hidden.flatten(0, 1)[positions]).float()
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits
        logits = logits.flatten(0, 1)[positions].float()
    loss = F.cross_entropy(logits, targets, reduction="sum") / max(len(positions), 1)
    correct = (logits.detach().argmax(-1) == targets).sum()
    count = torch.full((), len(positions), device=loss.device)  # a fill, not a host copy
    return loss, count, correct


def self_pretrained(model_name):
    """Whether --model_name is a folder that pretrain.py pretrained from scratch (its
    eval_results.json says so): such a model fine-tunes best at a small BERT's rate, not at
    bert-base-chinese's."""
    import json

    path = os.path.join(os.path.expanduser(str(model_name)), "eval_results.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "held_out_perplexity" in record and bool(
        record.get("from_scratch"))


def build_mlm_model(model_name=None, from_scratch=False, vocab=None, num_layers=12,
                    hidden_size=768, num_heads=None, intermediate_size=None, dropout=0.1):
    """(BertForMaskedLM, tokenizer): continued pretraining from a hub id or folder, or, with
    from_scratch, a random BERT of the given size on the given WordPiece vocabulary: a vocab.txt
    file or a list of tokens (ewect.vocab.build_vocab)."""
    from transformers import AutoConfig, AutoModelForMaskedLM, BertForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if from_scratch:
        tokenizer = scratch_tokenizer(vocab)
        config = bert_config(len(tokenizer), num_layers, hidden_size, dropout, num_heads,
                             intermediate_size, pad_token_id=tokenizer.pad_token_id)
        return BertForMaskedLM(config), tokenizer
    folder = os.path.expanduser(model_name)
    if os.path.isdir(folder):  # a hub id's config comes with the model, and its errors too
        model_type = AutoConfig.from_pretrained(folder).model_type
        if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise UserError(f"--model_name {model_name}: {model_type} has no masked-LM head, so "
                            "pretrain.py cannot continue its pretraining; fine-tune it with "
                            "train.py")
    return from_pretrained(AutoModelForMaskedLM, model_name, dropout)
