"""Response caching through `aigw serve`, driven by the openai SDK: what hits, what must not, and isolation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import AzureOpenAI

from tests.servers import (
    CLIENT_KEY,
    GATEWAY_ENV,
    OTHER_KEY,
    THIRD_KEY,
    clear_sim_requests,
    gateway_config,
    run_aigw,
    sim_requests,
    write_yaml,
)

CACHE = {
    "enabled": True,
    "scope": "tenant",
    "semantic": {"deployments": ["gpt-4o-mini"], "embedding_deployment": "text-embedding-3-small"},
}


@pytest.fixture(scope="module")
def cached_url(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("cache")
    config = gateway_config(sim_url, cache=CACHE, stores={"cache": f"sqlite:///{folder}/cache.db"})
    with run_aigw(["serve", "--config", str(write_yaml(folder / "g.yaml", config))], env=GATEWAY_ENV) as gateway:
        yield gateway.url


def client(url: str, key: str = CLIENT_KEY, api_version: str = "2024-10-21") -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=url, api_key=key, api_version=api_version, max_retries=0)


def ask(url: str, text: str, *, key: str = CLIENT_KEY, model: str = "gpt-4o", **extra: Any) -> tuple[str, str]:
    """(x-aigw-cache, answer) for one chat request; the `calls` fixture counts backend calls."""
    params: dict[str, Any] = {"temperature": 0, **extra}
    raw = client(url, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **params
    )
    return raw.headers["x-aigw-cache"], raw.parse().choices[0].message.content or ""


@pytest.fixture
def calls(sim_url: str) -> Any:
    clear_sim_requests(sim_url)
    return lambda: len([r for r in sim_requests(sim_url) if r["path"].endswith("/chat/completions")])


def test_miss_then_hit_with_age_and_no_backend_call(cached_url: str, calls: Any) -> None:
    first = client(cached_url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "miss then hit"}], temperature=0
    )
    second = client(cached_url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "miss then hit"}], temperature=0
    )
    assert first.headers["x-aigw-cache"] == "MISS" and second.headers["x-aigw-cache"] == "HIT"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert int(second.headers["age"]) >= 0
    assert "x-aigw-backend" not in second.headers
    assert calls() == 1


def test_non_deterministic_requests_bypass(cached_url: str, calls: Any) -> None:
    for _ in range(2):
        status, _ = ask(cached_url, "creative please", temperature=0.8)
        assert status == "BYPASS"
    assert ask(cached_url, "seeded", temperature=0.8, seed=42)[0] == "MISS"
    assert ask(cached_url, "seeded", temperature=0.8, seed=42)[0] == "HIT"
    assert calls() == 3


def test_client_cache_control(cached_url: str, calls: Any) -> None:
    assert ask(cached_url, "no-store", extra_headers={"cache-control": "no-store"})[0] == "BYPASS"
    assert ask(cached_url, "no-store")[0] == "MISS"  # nothing was stored
    assert ask(cached_url, "no-store", extra_headers={"cache-control": "no-cache"})[0] == "MISS"  # refresh
    assert ask(cached_url, "no-store")[0] == "HIT"
    assert ask(cached_url, "ttl zero", extra_headers={"x-aigw-cache-ttl": "0"})[0] == "BYPASS"
    assert calls() == 4


def test_tenants_never_share_entries(cached_url: str, calls: Any) -> None:
    assert ask(cached_url, "tenant isolation", model="gpt-4o-mini")[0] == "MISS"  # alice, contoso
    assert ask(cached_url, "tenant isolation", model="gpt-4o-mini", key=THIRD_KEY)[0] == "HIT"  # carol, contoso
    assert ask(cached_url, "tenant isolation", model="gpt-4o-mini", key=OTHER_KEY)[0] == "MISS"  # bob, fabrikam
    assert calls() == 2


@pytest.mark.parametrize(
    ("change", "extra"),
    [
        ("model", {"model": "gpt-4o-mini"}),
        ("max_tokens", {"max_tokens": 40}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("an unknown field", {"extra_body": {"a_new_reasoning_option": "high"}}),
        ("top_p", {"top_p": 0.5}),
        ("n", {"n": 2}),
    ],
)
def test_every_field_that_can_change_the_answer_changes_the_key(
    cached_url: str, calls: Any, change: str, extra: dict[str, Any]
) -> None:
    text = f"sensitivity to {change}"
    assert ask(cached_url, text)[0] == "MISS"
    assert ask(cached_url, text, **extra)[0] == "MISS", change
    assert calls() == 2


def test_api_version_and_messages_change_the_key_but_user_does_not(cached_url: str, calls: Any) -> None:
    messages: Any = [{"role": "user", "content": "versions"}]
    first = client(cached_url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, temperature=0
    )
    other = client(cached_url, api_version="2025-01-01-preview").chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, temperature=0
    )
    assert (first.headers["x-aigw-cache"], other.headers["x-aigw-cache"]) == ("MISS", "MISS")
    assert ask(cached_url, "versions", user="someone-else")[0] == "HIT"  # "user" is not part of the key
    assert ask(cached_url, "versions ")[0] == "MISS"
    assert calls() == 3


def test_errors_and_truncated_answers_are_not_cached(cached_url: str, calls: Any) -> None:
    with pytest.raises(Exception, match="500"):
        ask(cached_url, "error first", extra_headers={"x-aigw-sim-fault": "500"})
    assert ask(cached_url, "error first")[0] == "MISS"
    assert ask(cached_url, "truncated", max_tokens=3)[0] == "MISS"
    assert ask(cached_url, "truncated", max_tokens=3)[0] == "MISS"  # finish_reason "length": not stored
    assert calls() == 4


def test_stream_hits_are_replayed_as_streams_and_streamed_misses_are_stored(cached_url: str, calls: Any) -> None:
    c = client(cached_url)
    messages: Any = [{"role": "user", "content": "stream me"}]
    stream = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, temperature=0, stream=True)
    assert stream.headers["x-aigw-cache"] == "MISS"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in stream.parse() if ch.choices)
    json_hit = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, temperature=0)
    assert json_hit.headers["x-aigw-cache"] == "HIT"
    assert json_hit.parse().choices[0].message.content == streamed
    assert json_hit.parse().usage is not None and json_hit.parse().usage.completion_tokens > 0  # type: ignore[union-attr]
    replay = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    assert replay.headers["x-aigw-cache"] == "HIT"
    assert replay.headers["content-type"].startswith("text/event-stream")
    chunks = list(replay.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == streamed
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert calls() == 1


def test_embeddings_are_always_cacheable(cached_url: str, sim_url: str) -> None:
    clear_sim_requests(sim_url)
    c = client(cached_url)
    first = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="cache this vector")
    second = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="cache this vector")
    assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("MISS", "HIT")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert len([r for r in sim_requests(sim_url) if r["path"].endswith("/embeddings")]) == 1


def test_semantic_hits_similar_prompts_but_not_opposite_ones(cached_url: str, calls: Any) -> None:
    assert ask(cached_url, "What is the capital of France?", model="gpt-4o-mini")[0] == "MISS"
    raw = client(cached_url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "what is the capital of france"}], temperature=0
    )
    assert raw.headers["x-aigw-cache"] == "SEMANTIC-HIT"
    assert float(raw.headers["x-aigw-cache-score"]) >= 0.95
    assert ask(cached_url, "Please turn on the light in the kitchen", model="gpt-4o-mini")[0] == "MISS"
    assert ask(cached_url, "Please turn off the light in the kitchen", model="gpt-4o-mini")[0] == "MISS"
    # Semantic hits stay within the tenant too.
    assert ask(cached_url, "what is the capital of france", model="gpt-4o-mini", key=OTHER_KEY)[0] == "MISS"
    assert calls() == 4


def test_gpt4o_has_no_semantic_cache(cached_url: str, calls: Any) -> None:
    assert ask(cached_url, "Where is the Eiffel Tower?")[0] == "MISS"
    assert ask(cached_url, "where is the eiffel tower")[0] == "MISS"
    assert calls() == 2


def ask_messages(url: str, messages: list[dict[str, Any]], **extra: Any) -> str:
    """x-aigw-cache of one gpt-4o-mini (semantic) chat request with these messages."""
    raw = client(url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        **extra,
    )
    return raw.headers["x-aigw-cache"]


def test_semantic_hits_only_when_all_but_the_embedded_text_matches(cached_url: str, calls: Any) -> None:
    def convo(system: str, *turns: str) -> list[dict[str, Any]]:
        roles = ["user", "assistant"] * len(turns)
        return [{"role": "system", "content": system}] + [
            {"role": role, "content": text} for role, text in zip(roles, turns, strict=False)
        ]

    question = "Which river flows through the city of Paris?"
    assert ask_messages(cached_url, convo("You answer in French.", question)) == "MISS"
    # The same question, worded a little differently, in the same conversation: a semantic hit.
    assert ask_messages(cached_url, convo("You answer in French.", "which river flows through the city of paris")) == (
        "SEMANTIC-HIT"
    )
    # Another system prompt, or another conversation ending in the same question, is never a semantic hit.
    assert ask_messages(cached_url, convo("You answer in German.", question)) == "MISS"
    assert ask_messages(cached_url, convo("You answer in French.", "Hi", "Hello!", question)) == "MISS"
    # Nor is another parameter (or a tool) that the exact key would have seen.
    assert ask_messages(cached_url, convo("You answer in French.", question), max_tokens=77) == "MISS"
    assert calls() == 4


def test_semantic_hits_never_cross_images(cached_url: str, calls: Any) -> None:
    def with_image(url: str, text: str) -> list[dict[str, Any]]:
        parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        return [{"role": "user", "content": parts}]

    cat, dog = "https://example.invalid/cat.png", "https://example.invalid/dog.png"
    assert ask_messages(cached_url, with_image(cat, "What animal is in this picture?")) == "MISS"
    assert ask_messages(cached_url, with_image(cat, "what animal is in this picture")) == "SEMANTIC-HIT"
    assert ask_messages(cached_url, with_image(dog, "What animal is in this picture?")) == "MISS"
    assert calls() == 2


@pytest.mark.parametrize("value", ["+5", "5 0", "1e3", "-1", "0x10", "٣".encode(), "²".encode(), "604801", "9" * 40])
def test_cache_ttl_header_takes_ascii_digits_up_to_the_maximum_else_400(
    cached_url: str, calls: Any, value: str | bytes
) -> None:
    body = {"messages": [{"role": "user", "content": "ttl header"}], "temperature": 0.7}  # even when not cached
    response = httpx.post(
        f"{cached_url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        json=body,
        headers=[
            (b"api-key", CLIENT_KEY.encode()),
            (b"x-aigw-cache-ttl", value.encode() if isinstance(value, str) else value),
        ],
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "x-aigw-cache-ttl" and "x-aigw-cache-ttl" in error["message"]
    assert calls() == 0


def test_cache_ttl_header_at_the_maximum_is_used(cached_url: str, calls: Any) -> None:
    assert ask(cached_url, "longest ttl", extra_headers={"x-aigw-cache-ttl": "604800"})[0] == "MISS"
    assert ask(cached_url, "longest ttl")[0] == "HIT"
    assert calls() == 1


def test_streamed_hit_has_no_usage_unless_the_client_asked(cached_url: str, calls: Any) -> None:
    c = client(cached_url)
    messages: Any = [{"role": "user", "content": "stream me without usage"}]
    for expected in ("MISS", "HIT"):
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, temperature=0, stream=True)
        assert raw.headers["x-aigw-cache"] == expected
        text = ""
        for chunk in raw.parse():  # the common loop: every chunk has a choice
            if expected == "HIT":  # (a relayed miss is the streams' business: tokens/usage.py)
                assert "usage" not in chunk.model_fields_set, chunk
            text += chunk.choices[0].delta.content or ""
        assert text
    assert calls() == 1
