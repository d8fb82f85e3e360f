"""A BERT WordPiece vocabulary built from a run's own posts, for --from_scratch without --vocab:
nothing to download, and the same posts give the same vocabulary in any process.

Posts are split into words as transformers' BertTokenizer splits them (tokenizers' BertNormalizer:
lowercase, accents off, a space around every CJK character; BertPreTokenizer: whitespace and
punctuation), so that each Chinese character is a word, and a token, of its own. The vocabulary
is BERT's special tokens, then every character seen at least min_frequency times (as a word's
first character `c`, or inside a word as `##c`), commonest first, then WordPiece merges: the
adjacent pair of pieces seen most often joined into one token, again and again, as HF tokenizers'
WordPieceTrainer learns them. That trainer breaks ties between equal counts in hash order, so two
processes built different vocabularies from one corpus; here ties go to the first pair in
alphabetical order.
"""
import heapq
from collections import Counter, defaultdict

from .errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: padding is id 0
# The size is a cap: on SMP2020-EWECT's train and eval posts the minimum frequency stops first,
# at 7,714 tokens (bert-base-chinese has 21,128).
VOCAB_SIZE, MIN_FREQUENCY = 8000, 2


def word_counts(texts):
    """How often each word occurs, words as BertTokenizer's defaults split the texts (about 2 s
    for SMP2020-EWECT's 38,000 train and eval posts)."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return Counter(word for text in texts
                   for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))


def build_vocab(texts, vocab_size=VOCAB_SIZE, min_frequency=MIN_FREQUENCY):
    """The tokens, in id order: at most vocab_size, each seen at least min_frequency times."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f"--vocab_size {vocab_size}: needs room for tokens beyond the "
                        f"{len(SPECIAL_TOKENS)} special ones")
    words = [[[word[0], *(f"##{c}" for c in word[1:])], count]
             for word, count in sorted(word_counts(texts).items())]
    characters = Counter()
    for pieces, count in words:
        for piece in pieces:
            characters[piece] += count
    alphabet = sorted((c for c, n in characters.items() if n >= min_frequency),
                      key=lambda c: (-characters[c], c))
    vocab = [*SPECIAL_TOKENS, *alphabet[:vocab_size - len(SPECIAL_TOKENS)]]
    return vocab + learn_merges(words, vocab_size - len(vocab), min_frequency)


def learn_merges(words, room, min_frequency):
    """Up to `room` new tokens, each the commonest adjacent pair of pieces (seen at least
    min_frequency times; ties: the first pair in alphabetical order) joined, the join applied to
    every word holding it before the next pair is chosen. `words`: [pieces, count] lists, which
    are updated. Pair counts are kept up to date, word by word, in a heap of (-count, pair)
    whose outdated entries are skipped."""
    counts, holders = Counter(), defaultdict(set)
    for i, (pieces, count) in enumerate(words):
        for pair in zip(pieces, pieces[1:]):
            counts[pair] += count
            holders[pair].add(i)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merged_tokens, known = [], set()
    while heap and len(merged_tokens) < room:
        count, pair = heapq.heappop(heap)
        if -count != counts[pair]:
            continue
        if -count < min_frequency:
            break
        token = pair[0] + pair[1][2:]
        if token not in known:  # ab + ##c and a + ##bc both make abc
            merged_tokens.append(token)
            known.add(token)
        changed = set()
        for i in holders.pop(pair):
            pieces, count = words[i]
            joined = join_pair(pieces, pair)
            for old in zip(pieces, pieces[1:]):
                counts[old] -= count
                changed.add(old)
            for new in zip(joined, joined[1:]):
                counts[new] += count
                holders[new].add(i)
                changed.add(new)
            words[i][0] = joined
        for changed_pair in changed:
            if counts[changed_pair] > 0:
                heapq.heappush(heap, (-counts[changed_pair], changed_pair))
    return merged_tokens


def join_pair(pieces, pair):
    """The pieces with every occurrence of the pair, left to right, joined into one."""
    joined, i = [], 0
    while i < len(pieces):
        if tuple(pieces[i:i + 2]) == pair:
            joined.append(pieces[i] + pieces[i + 1][2:])
            i += 2
        else:
            joined.append(pieces[i])
            i += 1
    return joined


def scratch_vocab(args, texts, log):
    """The vocabulary of a run: --vocab's file, or with --from_scratch and no --vocab one built
    from `texts`, the run's training posts (logged in one line). Every process of a torchrun run
    builds the same one in memory."""
    if not args.from_scratch or args.vocab:
        return args.vocab
    tokens = build_vocab(texts, args.vocab_size, args.vocab_min_frequency)
    log(f"vocabulary: built from {len(texts)} posts, {len(tokens)} tokens (min frequency "
        f"{args.vocab_min_frequency})")
    return tokens
