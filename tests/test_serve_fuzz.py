"""Fuzzing `lmlab serve` from its own OpenAPI schema (schemathesis): whatever a client sends, the answer is
never a 5xx, and every error is OpenAI's JSON. Bounded: a fixed number of examples per route."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from lmlab.data.tokenizer import Tokenizer  # noqa: E402
from lmlab.infer.engine import Engine  # noqa: E402
from lmlab.model.config import ModelConfig  # noqa: E402
from lmlab.model.transformer import Transformer  # noqa: E402
from lmlab.serve.app import build_app  # noqa: E402

EXAMPLES = int(os.environ.get("LMLAB_FUZZ_EXAMPLES", "100"))
"""Examples per route and mode; `make fuzz` runs many more."""


@pytest.fixture(scope="module")
def api_schema(tiny_data):
    """The server on a random one-layer model (the fuzzer tests the server, not the model), as its schema."""
    import torch

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
    app = build_app(Engine(model, tok, backend="torch"), "tiny", max_waiting=256)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.scheduler.close()


def _fuzz(op, mode, statuses: dict[str, set[int]]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case):
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "tiny"  # a random name is a 404 before anything else is looked at
        response = case.call()
        statuses.setdefault(op.path, set()).add(response.status_code)
        assert response.status_code < 500, (op.path, case.body, response.text[:500])
        if response.status_code >= 400:
            err = response.json()["error"]
            assert isinstance(err["message"], str) and err["message"] and "Traceback" not in response.text

    check()


def test_no_input_gets_a_server_error(api_schema):
    """Every route, from cases generated out of its schema: valid ones, and (for bodies) invalid ones."""
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/playground/next"}
    statuses: dict[str, set[int]] = {}
    for op in operations:
        _fuzz(op, GenerationMode.POSITIVE, statuses)
        if op.method.upper() == "POST":  # a route without a body has no invalid input to generate
            _fuzz(op, GenerationMode.NEGATIVE, statuses)
    # The fuzzer got through validation (some 200s) and past it (some 4xx) on the generating routes.
    for path in ("/v1/completions", "/v1/chat/completions", "/playground/next"):
        assert 200 in statuses[path] and any(400 <= c < 500 for c in statuses[path]), (path, statuses[path])
