"""The cleaning rules (README, "The scripts"), and their properties over arbitrary Unicode."""
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ewect.cleaning import clean_text


@pytest.mark.parametrize("raw, cleaned", [
    ("我們對這個電腦軟體很滿意", "我们对这个电脑软体很满意"),            # traditional -> simplified
    ("@陈震同学 今天好开心", "今天好开心"),                               # mention removed
    ("转发//@小明: 哈哈//@大王:嗯", "转发 哈哈 嗯"),                     # repost chain removed
    ("看这个http://t.cn/R2Wx9I3好看", "看这个 好看"),                     # URL glued to text
    ("http://t.cn/R2Wx9I3", ""),
    ("点开 t.cn/A6xyz 看看", "点开 看看"),                               # bare short link
    ("https://www.weibo.com/u/123?from=a 哈", "哈"),
    ("联系 abc.def@qq.com 吧", "联系 吧"),                               # email removed
    ("太好了！", "太好了!"),                                             # full-width punctuation
    ("ＡＢＣ１２３", "abc123"),                                          # full-width letters
    ("ABC", "abc"),                                                      # lowercase
    ("全角\u3000空格", "全角 空格"),                                     # ideographic space
    ("[心][哈哈]😀", "[心][哈哈]😀"),                                    # emoji kept
    ("http://t.cn/abc[心]", "[心]"),                                     # tag right after a link
    ("  a\t\nb  ", "a b"),                                               # whitespace collapsed
    ("x\x00y\ud800z", "x y z"),                                          # control, lone surrogate
    ("@name 正文", "正文"),                                              # mention, space
    ("@name:正文", "正文"),                                              # mention, colon
    ("@小明，你好", ",你好"),                                             # ends at punctuation
    ("@小明！太好了", "!太好了"),
])
def test_cleaning_rules(raw, cleaned):
    assert clean_text(raw) == cleaned


# A Weibo nickname is at most 30 bytes (a Chinese character counts 2, an ASCII one 1). A name
# glued to the text after it cannot be told from that text: the bound caps what the mention takes.
@pytest.mark.parametrize("raw, cleaned", [
    # 16 characters: the name is at most 15 of them, so the complaint's end survives.
    ("@招商银行我只是想改个电话号码而已", "已"),
    # 13 characters fit in the bound: what is glued to the name within it is lost, the rest kept.
    ("吃到吐@看小香梨变身哪是人啊臭变态！诅咒你", "吃到吐 !诅咒你"),
    ("@" + "我" * 15 + "真的太生气了", "真的太生气了"),
    ("@" + "a" * 30 + "bc", "bc"),                                       # 30 ASCII bytes
    ("@ab" + "我" * 15 + "气死了", "我气死了"),                           # 2 + 14 * 2 = 30 bytes
    ("转发//@" + "我" * 16 + ":哈哈", "转发 我:哈哈"),                     # repost chain, too long
    ("@" + "我" * 15 + " 正文", "正文"),                                  # 30 bytes exactly, all name
])
def test_mention_takes_at_most_a_nickname(raw, cleaned):
    assert clean_text(raw) == cleaned


def weibo_bytes(text):
    return sum(1 if c.isascii() else 2 for c in text)


# Characters clean_text leaves as they are, so what a mention removes can be read off the result.
NAME_CHARS = "我你他好气死了开心吃到吐招商银行abcxyz019_-"


@settings(max_examples=200, deadline=None)
@given(st.text(NAME_CHARS, min_size=1, max_size=40))
def test_mention_removes_one_nickname_at_most(name):
    kept = clean_text("@" + name)
    removed = name[:len(name) - len(kept)]
    assert name.endswith(kept)                                   # only a prefix goes
    assert weibo_bytes(removed) <= 30                            # never more than a nickname
    if kept:                                                     # and the longest one that fits
        assert weibo_bytes(removed + kept[0]) > 30


# Fragments that make the generated text likely to hit every rule, mixed with arbitrary Unicode
# (lone surrogates included: command-line arguments can carry them).
FRAGMENTS = ["http://", "https://t.cn/", "www.", "t.cn/", "@", "//@", "＠", ":", "ｈｔｔｐ://",
             "a@b.com", "Ａ", "　", "[心]", "😀", "們", "\n", ".cn/", "-", "_",
             "我" * 16]                                          # longer than a nickname
any_text = st.lists(st.one_of(st.text(st.characters(codec=None)), st.sampled_from(FRAGMENTS)),
                    max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_cleaning_properties(text):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned                        # idempotent
    assert not re.search(r"https?://|www\.", cleaned, re.IGNORECASE)  # no URL
    assert not re.search(r"@[\w-]", cleaned)                     # no '@name' or email left
    assert not re.search("[\uff01-\uff5e\u3000]", cleaned)       # no full-width ASCII
    assert not re.search("[\ud800-\udfff\x00-\x1f]", cleaned)    # encodable, no control chars
    assert cleaned == cleaned.strip() and "  " not in cleaned


@pytest.mark.parametrize("run", ["a.", "a", "a-", "1.", "a.b"])
def test_a_long_run_of_letters_and_dots_is_cleaned_at_once(run):
    # Before the URL and email patterns were bounded, one such 100,000-character post took
    # minutes (the whole run scanned from each of its characters), stalling a file or the demo.
    text = run * (100_000 // len(run))
    start = time.perf_counter()
    clean_text(text)
    assert time.perf_counter() - start < 10  # about 0.3 s; the unbounded patterns: minutes


def test_an_over_long_email_leaves_no_address():
    assert clean_text("写信 " + "x" * 70 + "@qq.com 吧") == "写信 xxxxxx 吧"
