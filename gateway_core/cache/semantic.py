"""What the semantic cache embeds, and the request with that text masked out.

Only the embedded text is compared by similarity. Everything else in the request (system and earlier
messages, images, tools, every parameter) goes into the semantic bucket's hash with the embedded text replaced
by a marker, so it must match exactly, as in the exact key.
"""

from __future__ import annotations

from typing import Any

# Where the embedded text was. A dict is never a valid message content or text, so no request collides with it.
EMBEDDED = {"aigw": "embedded text"}


def embedded_prompt(body: dict[str, Any], max_messages: int, include_system: bool) -> tuple[str, dict[str, Any]]:
    """(the text to embed, ``body`` with that text masked); the text is "" when there is nothing to embed.

    The text is the last user message, or the last ``max_messages`` messages of the conversation (system and
    developer messages only with ``include_system``).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return "", body
        return prompt, {**body, "prompt": EMBEDDED}
    kept = [
        i
        for i, m in enumerate(messages)
        if isinstance(m, dict) and (include_system or m.get("role") not in ("system", "developer"))
    ]
    users = [i for i in kept if messages[i].get("role") == "user"]
    kept = users[-1:] if max_messages == 1 else kept[-max_messages:]
    text = "\n".join(f"{messages[i].get('role')}: {_content_text(messages[i].get('content'))}" for i in kept)
    masked = list(messages)
    for i in kept:
        masked[i] = {**messages[i], "content": _mask(messages[i].get("content"))}
    return text, {**body, "messages": masked}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(t for t in (_part_text(p) for p in content) if t is not None)
    return ""


def _part_text(part: Any) -> str | None:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    return None


def _mask(content: Any) -> Any:
    """``content`` with its text replaced by the marker; images and other parts stay as they are."""
    if isinstance(content, str):
        return EMBEDDED
    if isinstance(content, list):
        return [{**p, "text": EMBEDDED} if _part_text(p) is not None else p for p in content]
    return content
