"""The chat template: conversations rendered with the tokenizer's turn tokens.

    <|system|> You are terse.<|end_of_turn|><|user|> Hi<|end_of_turn|><|assistant|> Hello!<|end_of_turn|>

The turn markers are single special tokens (the tokenizer maps their literal
text to their ids), so a model learns exactly where a turn starts and ends, and
generation of an assistant turn stops at `<|end_of_turn|>`. A space follows each
marker: byte-level BPE tokenises a word differently at the start of a text
(" Saltmarsh" mid-sentence, "Saltmarsh" at the start), and without the space an
answer would be spelt in tokens its pretraining text never used (on the world,
SFT's chat-format accuracy drops sharply without it: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmlab.errors import LmlabError

ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end_of_turn|>"
SPACE = " "
"""What separates a role marker from the turn's text (see the module docstring)."""


def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The text of a conversation; with `add_generation_prompt`, ending where the assistant's reply begins."""
    parts = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise LmlabError(f"message {i}: role must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise LmlabError(f"message {i}: content must be a string, got {type(content).__name__}")
        parts.append(f"{ROLES[role]}{SPACE}{content}{END_OF_TURN}")
    if add_generation_prompt:
        parts.append(ROLES["assistant"])
    return "".join(parts)
