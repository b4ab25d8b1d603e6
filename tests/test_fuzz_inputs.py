"""Fuzzing every JSONL reader: arbitrary bytes and arbitrary JSON values per line.

A reader may accept the file or refuse it with an LmlabError (one line naming the file and line); any
other exception is a bug, since the CLI would show it as a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError

# Keys the readers look for, mixed with arbitrary ones, so generated objects often get past the first checks.
KEYS = st.sampled_from(["prompt", "chosen", "rejected", "margin", "system", "messages", "role", "content",
                        "response", "text", "answer", "user", "assistant"]) | st.text(max_size=6)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["user", "assistant", "system", "", " "]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=12)
# Records shaped like the real ones, each field a plausible string or anything at all, to get past the first checks.
FIELD = st.one_of(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), VALUES)
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system"]) | VALUES,
                                              "content": FIELD})
RECORD = st.fixed_dictionaries({}, optional={
    **{k: FIELD for k in ("prompt", "chosen", "rejected", "response", "text", "answer", "system", "margin")},
    "messages": st.lists(MESSAGE | VALUES, max_size=3) | VALUES})
JSON_LINE = (VALUES | RECORD).map(lambda v: json.dumps(v).encode())  # NaN and Infinity included, as json.dumps writes
ODD_LINE = st.binary(max_size=40) | st.sampled_from([b"[" * 5000, b"1" * 5000, b"\xef\xbb\xbf{}", b"\xff", b" "])
FILES = st.lists(JSON_LINE | ODD_LINE, max_size=6).map(b"\n".join)

# 60 examples per reader keep the suite fast; LMLAB_FUZZ_EXAMPLES=2000 searches harder.
FUZZ = settings(max_examples=int(os.environ.get("LMLAB_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def readers() -> dict[str, tuple[str, Callable[[Path], object]]]:
    """name -> (file suffix, a call that reads the file the way lmlab does)."""
    from lmlab.data.conversations import read_located
    from lmlab.data.preferences import load_pairs, read_preferences
    from lmlab.data.text import load_documents
    from lmlab.data.world import _read_jsonl
    from lmlab.infer.generate import GenerateConfig, read_prompts
    from lmlab.post.rl import load_prompts
    from lmlab.testtime.tasks import file_task
    from lmlab.train.metrics import read_metrics

    return {
        "conversations": (".jsonl", read_located),
        "text-jsonl": (".jsonl", load_documents),
        "text-txt": (".txt", load_documents),
        "prompts-jsonl": (".jsonl", lambda p: read_prompts(GenerateConfig(prompts_file=str(p)))),
        "prompts-txt": (".txt", lambda p: read_prompts(GenerateConfig(prompts_file=str(p)))),
        "world": (".jsonl", _read_jsonl),
        "preferences": (".jsonl", read_preferences),
        "preference-splits": (".jsonl", lambda p: load_pairs(str(p), 0)),
        "rl-prompts": (".jsonl", lambda p: load_prompts(str(p), 0)),
        "testtime-task": (".jsonl", file_task),
        "metrics": (".jsonl", read_metrics),
    }


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.mark.parametrize("name", list(readers()))
@FUZZ
@given(content=FILES)
def test_reader_fails_only_with_lmlab_error(name, content, scratch):
    suffix, read = readers()[name]
    path = scratch / f"input{suffix}"
    path.write_bytes(content)
    try:
        read(path)
    except LmlabError as e:
        assert "\n" not in str(e), str(e)  # the CLI shows it as one line


# --- the recipe loader ------------------------------------------------------------------------------------

def recipe_classes() -> dict[str, type]:
    """The config classes recipes most often feed: nested sections, lists, optionals, code keys."""
    from lmlab.quickstart import QuickstartConfig
    from lmlab.testtime.run import TestTimeConfig
    from lmlab.train.trainer import PretrainConfig

    return {"pretrain": PretrainConfig, "testtime": TestTimeConfig, "quickstart": QuickstartConfig}


def recipe_keys(cls: type) -> st.SearchStrategy:
    """Real dotted keys of `cls` (so values reach the type checks and __post_init__), and arbitrary ones."""
    from lmlab.config import leaf_fields

    return st.sampled_from([name for name, *_ in leaf_fields(cls)]) | st.text(max_size=8)


def nest(flat: dict[str, object]) -> dict[str, object]:
    """{'train.lr': 1} -> {'train': {'lr': 1}}; a clash keeps whichever came first."""
    out: dict[str, object] = {}
    for key, value in flat.items():
        node, *parts = key.split(".")
        target = out
        for part in [node, *parts][:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target.setdefault(([node, *parts])[-1], value)
    return out


YAML_TEXT = st.text(max_size=80) | st.sampled_from(["[1, 2]", "a: [", "{a: {b: {c: ", "!!python/object:os.system",
                                                    "x: &a [*a]", "train: 5", "model: {d_model: -3}"])


@pytest.mark.parametrize("verb", list(recipe_classes()))
@FUZZ
@given(data=st.data())
def test_recipe_loader_fails_only_with_lmlab_error(verb, data, scratch):
    import yaml

    from lmlab.config import load

    cls = recipe_classes()[verb]
    flat = data.draw(st.dictionaries(recipe_keys(cls), VALUES, max_size=5))
    text = data.draw(st.just(yaml.safe_dump(nest(flat))) | YAML_TEXT | st.binary(max_size=60).map(repr))
    path = scratch / "recipe.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        load(cls, path)
    except LmlabError as e:
        assert "\n" not in str(e), str(e)
