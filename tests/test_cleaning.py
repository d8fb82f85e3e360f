"""The cleaning rules of the guide and issue 2, and their properties over arbitrary Unicode."""
import re

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
])
def test_cleaning_rules(raw, cleaned):
    assert clean_text(raw) == cleaned


# Fragments that make the generated text likely to hit every rule, mixed with arbitrary Unicode
# (lone surrogates included: command-line arguments can carry them).
FRAGMENTS = ["http://", "https://t.cn/", "www.", "t.cn/", "@", "//@", "＠", ":", "ｈｔｔｐ://",
             "a@b.com", "Ａ", "　", "[心]", "😀", "們", "\n", ".cn/", "-", "_"]
any_text = st.lists(st.one_of(st.text(st.characters(codec=None)), st.sampled_from(FRAGMENTS)),
                    max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_cleaning_properties(text):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned                        # idempotent
    assert not re.search(r"https?://|www\.", cleaned, re.IGNORECASE)  # no URL
    assert not re.search(r"@[\w-]", cleaned)                     # no mention, hence no email
    assert not re.search("[\uff01-\uff5e\u3000]", cleaned)       # no full-width ASCII
    assert not re.search("[\ud800-\udfff\x00-\x1f]", cleaned)    # encodable, no control chars
    assert cleaned == cleaned.strip() and "  " not in cleaned
