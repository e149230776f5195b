"""The token count memo: counts stay exact (a hit is what the encoder says), and it stays within its bounds
whatever texts it is given."""

from __future__ import annotations

import threading

from gateway_core.tokens.counting import MEMO, text_tokens
from gateway_core.tokens.encodings import encoding
from gateway_core.tokens.memo import TokenCountMemo

O200K, CL100K = encoding("o200k_base"), encoding("cl100k_base")
TEXTS = [
    "",
    "user",
    "You are a helpful assistant that answers in French.",
    "<|endoftext|> is ordinary text in a prompt",
    "naïve café 日本語のテキスト 🚀🚀 \u200b",
    "x" * 5000,
    "def f(x):\n    return x ** 2  # code, whitespace and symbols\n\t\t",
]


def direct(enc: object, text: str) -> int:
    return len(enc.encode(text, disallowed_special=()))  # type: ignore[attr-defined]


def test_counts_are_the_encoders_on_a_miss_and_on_a_hit() -> None:
    memo = TokenCountMemo()
    for enc in (O200K, CL100K):
        for text in TEXTS:
            expected = direct(enc, text)
            assert memo.count(enc, text) == expected  # counted
            assert memo.count(enc, text) == expected  # remembered
            assert text_tokens(text, enc) == expected  # through the gateway's own memo too
    assert len(memo) == 2 * len(TEXTS)


def test_the_same_text_is_remembered_per_encoding() -> None:
    # A text the two encodings split differently: a hit in one never answers for the other.
    text = "Ünïcödé and emoji 🚀🚀🚀 with some CamelCaseIdentifiers_and_snake_case"
    assert direct(O200K, text) != direct(CL100K, text)
    memo = TokenCountMemo()
    assert memo.count(O200K, text) == direct(O200K, text)
    assert memo.count(CL100K, text) == direct(CL100K, text)
    assert memo.count(O200K, text) == direct(O200K, text)


def test_entries_are_bounded_oldest_out_first() -> None:
    memo = TokenCountMemo(max_entries=10)
    for i in range(100):
        memo.count(O200K, f"message number {i}")
    assert len(memo) == 10
    assert memo.total_chars == sum(len(f"message number {i}") for i in range(90, 100))
    assert memo.count(O200K, "message number 3") == direct(O200K, "message number 3")  # gone, counted again


def test_characters_held_are_bounded() -> None:
    memo = TokenCountMemo(max_entries=1000, max_total_chars=1000, max_text_chars=400)
    for i in range(50):
        memo.count(O200K, f"{i:03d}" + "y" * 297)  # 300 characters each
    assert memo.total_chars <= 1000 and len(memo) == 3


def test_long_texts_are_counted_but_never_kept() -> None:
    memo = TokenCountMemo(max_text_chars=100)
    long = "a longer text " * 20
    assert memo.count(O200K, long) == direct(O200K, long)
    assert memo.count(O200K, long) == direct(O200K, long)
    assert len(memo) == 0 and memo.total_chars == 0


def test_the_gateways_memo_keeps_no_large_text() -> None:
    big = "z " * 20_000
    assert text_tokens(big, O200K) == direct(O200K, big)
    assert (O200K.name, big) not in MEMO._counts


def test_threads_counting_at_once_keep_counts_exact_and_bounds_kept() -> None:
    memo = TokenCountMemo(max_entries=50, max_total_chars=2000)
    texts = [f"shared prompt {i % 80} " * (1 + i % 5) for i in range(400)]
    wrong: list[str] = []

    def count_all() -> None:
        for text in texts:
            if memo.count(O200K, text) != direct(O200K, text):
                wrong.append(text)

    threads = [threading.Thread(target=count_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(memo) <= 50 and memo.total_chars <= 2000
    assert memo.total_chars == sum(len(text) for _, text in memo._counts)
