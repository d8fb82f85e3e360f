"""The one text-cleaning function, used by clean_data.py, training data checks and inference.

Rules, in order: control characters and lone surrogates dropped; full-width → half-width
(U+FF01..U+FF5E and the ideographic space); traditional → simplified (OpenCC t2s); lowercase;
URLs (http/https, www., bare short links such as t.cn/…), emails and Weibo @-mentions (including
repost chains //@name:) removed, a mention taking at most one nickname's length (30 bytes by
Weibo's count) so that text glued to a name survives beyond it; whitespace collapsed. Emoji are
kept: [心]-style tags and Unicode emoji. clean_text(clean_text(x)) == clean_text(x).
"""
import re

import opencc

_T2S = opencc.OpenCC("t2s")

# Full-width ASCII variants sit exactly 0xFEE0 above their ASCII counterparts.
_HALF_WIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_HALF_WIDTH[0x3000] = ord(" ")

# URL characters are ASCII only, so a link glued to Chinese text stops where the Chinese starts;
# brackets are left out so that a [心] tag right after a link survives.
_URL_CHARS = r"[a-z0-9\-._~:/?#@!$&'()*+,;=%]"
_URL = rf"(?:https?://|www\.){_URL_CHARS}*"
# Parts are bounded as in DNS and email (63 characters a label, 64 before the @): unbounded, a
# long run of letters and dots is scanned to its end from each of its characters, which takes
# minutes for one 100,000-character post.
_SHORT_LINK = rf"\b(?:[a-z0-9-]{{1,63}}\.){{1,32}}(?:cn|com|net|org|cc|me|ly|io|gl|co)/{_URL_CHARS}*"
_EMAIL = r"[a-z0-9._%+\-]{1,64}@[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){0,32}\.[a-z]{2,63}"
# A Weibo name is letters (any script), digits, '_' and '-'; '//' and a trailing ':' belong to it.
_MENTION = r"(?://\s*)?@(?P<name>[\w\-]+)(?P<colon>\s*:)?"
_NOISE = re.compile("|".join([_URL, _SHORT_LINK, _EMAIL, _MENTION]), re.IGNORECASE)
# Weibo allows nicknames of 4 to 30 bytes, counting a Chinese character as 2 and an ASCII one as 1.
# A name glued to the text after it (no space, punctuation or ':') cannot be told from that text,
# so a mention takes at most this much and the rest of the run stays. Shorter runs are removed
# whole: they are cut-off names, or mentions all the same.
NICKNAME_MAX_BYTES = 30
_SPACES = re.compile(r"\s+")
# Control characters (Unicode category Cc; tabs and newlines become spaces) and lone surrogates,
# which cannot be encoded as UTF-8 and would break the tokenizer and printing.
_UNWANTED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _nickname_end(name):
    """How many leading characters of name one nickname can take."""
    size = 0
    for i, char in enumerate(name):
        size += 1 if char.isascii() else 2
        if size > NICKNAME_MAX_BYTES:
            return i
    return len(name)


def _replace_noise(match):
    """A space for a URL, an email or a whole mention; what lies beyond a nickname stays as it was."""
    name = match["name"]
    rest = name[_nickname_end(name):] if name else ""
    return " " + rest + (match["colon"] or "") if rest else " "


def _clean_once(text):
    text = _UNWANTED.sub(" ", text)
    text = _T2S.convert(text.translate(_HALF_WIDTH)).lower()
    # A space, not nothing, where noise was: nothing new can be glued together across the gap.
    text = _NOISE.sub(_replace_noise, text)
    return _SPACES.sub(" ", text).strip()


def clean_text(text):
    """Normalise one post; see the module docstring for the rules."""
    cleaned = _clean_once(text)
    # OpenCC and Unicode lowercasing can, for rare characters, produce text that one more pass
    # would change again; repeating until nothing changes keeps cleaning idempotent.
    for _ in range(3):
        again = _clean_once(cleaned)
        if again == cleaned:
            break
        cleaned = again
    return cleaned
