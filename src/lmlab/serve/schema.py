"""The OpenAI request bodies `lmlab serve` accepts, validated by pydantic (and so in its OpenAPI schema).

Fields and ranges follow OpenAI's API reference; `top_k`, `min_p`,
`repetition_penalty` and `ignore_eos` are the usual extensions (vLLM's names).
Types are strict: "0.5" is not a temperature. Unknown fields are ignored, as
OpenAI's clients send some (`user`, `metadata`) that change nothing here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmlab.infer.sampling import MAX_TOP_LOGPROBS

MAX_N = 16
"""Samples per prompt: more would let one request fill the batch."""
MAX_PROMPTS = 32
"""Prompts in one completions request."""

Text = Annotated[str, Field(max_length=100_000)]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
StopList = Annotated[list[Annotated[str, Field(min_length=1, max_length=1000)]], Field(max_length=16)]
TokenPrompts = Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                         Field(min_length=1, max_length=MAX_PROMPTS)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """The controls both endpoints share."""

    model: Text
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=1_000_000, description="0 or -1: off")
    min_p: float = Field(0.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Text | StopList | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) and self.stop else [s for s in self.stop or [] if s]


class CompletionRequest(_Sampling):
    prompt: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
             | Annotated[list[TokenId], Field(min_length=1)]
             | TokenPrompts)
    max_tokens: int | None = Field(16, ge=0, le=1_000_000)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: str | None = None


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)]
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class NextTokenRequest(_Strict):
    """The playground's next-token view: the distribution before and after each control."""

    prompt: Text = ""
    temperature: float = Field(1.0, ge=0, le=2)
    top_k: int = Field(0, ge=0, le=1_000_000)
    top_p: float = Field(1.0, gt=0, le=1)
    min_p: float = Field(0.0, ge=0, le=1)
    show: int = Field(12, ge=1, le=50)

