"""What is asked and how an answer is graded: the world's arithmetic and QA, or a JSONL file.

A task is a list of problems (the question and its true answer), how to put a question to a model
(plain text to complete, in the format the model was pretrained on, or a chat turn), where a sample
ends, and an answer extractor: a regex (its first group, or the whole match) or a Python function that
turns a response into an answer, or None when there is none. An answer that cannot be extracted is
wrong, never an error. Answers are compared after `normalise` (case, spaces, a final period, thousands
separators).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.conversations import read_jsonl
from lmlab.data.world import extract_answer, format_arith, format_qa, load_world
from lmlab.data.world_chat import normalise as chat_normalise
from lmlab.errors import LmlabError

Extractor = Callable[[str], "str | None"]


def normalise(answer: str) -> str:
    """The chat evaluation's normal form (case, spacing, a trailing period), and digit-group commas
    dropped, so that `1,234` and `1234` are one answer."""
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", chat_normalise(str(answer)))


def regex_extractor(pattern: str) -> Extractor:
    """The first match's first group (or the whole match when the regex has no group); None if no match."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise LmlabError(f"answer_regex {pattern!r} is not a valid regular expression: {e}") from None

    def extract(text: str) -> str | None:
        m = rx.search(text)
        if m is None:
            return None
        return m.group(1) if rx.groups else m.group(0)

    extract.__name__ = f"regex {pattern!r}"
    return extract


def import_function(spec: str, what: str) -> Callable[..., Any]:
    """`package.module:function` -> the function (for user-supplied extractors and scorers)."""
    if ":" not in spec:
        raise LmlabError(f"{what} must be 'module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise LmlabError(f"{what} {spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise LmlabError(f"{what} {spec!r} is not callable")
    return fn


def first_line(text: str) -> str | None:
    """The reply's first line (a QA answer), or None when it is empty."""
    line = text.strip().split("\n", 1)[0].strip()
    return line or None


@dataclass
class Task:
    name: str
    questions: list[str]
    answers: list[str]
    extract: Extractor
    plain: Callable[[str], str]
    """How a question is written for a base model to complete (chat models get the question alone)."""
    stop: list[str]
    """Stop strings for plain completion (a chat model stops at the end of its turn)."""
    extractor_name: str = ""

    def __post_init__(self) -> None:
        if not self.questions:
            raise LmlabError(f"task {self.name}: no problems")
        if len(self.questions) != len(self.answers):
            raise LmlabError(f"task {self.name}: {len(self.questions)} questions but {len(self.answers)} answers")

    def prompts(self, chat: bool) -> list[str]:
        return list(self.questions) if chat else [self.plain(q) for q in self.questions]

    def answer_of(self, text: str) -> str | None:
        """The normalised answer in a response, or None (unparseable counts as wrong)."""
        try:
            a = self.extract(text)
        except Exception:  # a user extractor that fails on odd text has found no answer
            return None
        return None if a is None or not str(a).strip() else normalise(str(a))

    def correct(self, i: int, answer: str | None) -> bool:
        return answer is not None and answer == normalise(self.answers[i])


def world_arith(world_dir: str | Path, split: str = "test", limit: int | None = None) -> Task:
    """The world's arithmetic word problems; a response is graded by its `The answer is N.` line."""
    items = load_world(world_dir)[f"arith_{split}"][:limit]

    def extract(text: str) -> str | None:
        a = extract_answer(text)
        return None if a is None else str(a)

    extract.__name__ = "The answer is N."
    return Task(f"world-arith ({split})", [p["question"] for p in items], [str(p["answer"]) for p in items],
                extract, format_arith, ["\n"], extract.__name__)


def world_qa(world_dir: str | Path, group: str = "qa_test", limit: int | None = None) -> Task:
    """The world's questions about people (default: QA-test, facts seen only in biographies)."""
    items = load_world(world_dir)[group][:limit]
    return Task(f"world-qa ({group})", [q["question"] for q in items], [q["answer"] for q in items],
                first_line, format_qa, ["\n"], "first line")


def file_task(path: str | Path, limit: int | None = None, template: str = "{prompt}") -> Task:
    """JSONL records {"prompt", "answer"}; `template` writes the prompt for plain completion."""
    if "{prompt}" not in template:
        raise LmlabError(f"prompt_template must contain {{prompt}}, got {template!r}")
    qs, ans = [], []
    for n, obj in read_jsonl(path):
        for k in ("prompt", "answer"):
            if k not in obj:
                raise LmlabError(f"{path}:{n}: missing field '{k}' (a problem needs prompt and answer)")
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise LmlabError(f"{path}:{n}: 'prompt' must be a non-empty string")
        qs.append(obj["prompt"])
        ans.append(str(obj["answer"]))
    return Task(Path(path).name, qs[:limit], ans[:limit], first_line,
                lambda q: template.replace("{prompt}", q), ["\n"], "first line")


def load_task(task: str, world: str, limit: int | None = None, split: str = "test",
              answer_regex: str | None = None, extractor: str | None = None,
              template: str = "{prompt}") -> Task:
    """`world-arith`, `world-qa` or a JSONL path, with an optional regex or function extractor."""
    if task == "world-arith":
        t = world_arith(world, split, limit)
    elif task == "world-qa":
        t = world_qa(world, "qa_train" if split == "train" else "qa_test", limit)
    else:
        if not Path(task).is_file():
            raise LmlabError(f"task must be 'world-arith', 'world-qa' or a JSONL file; {task!r} is neither")
        t = file_task(task, limit, template)
    if answer_regex and extractor:
        raise LmlabError("give answer_regex or extractor, not both")
    if answer_regex:
        t.extract = regex_extractor(answer_regex)
        t.extractor_name = t.extract.__name__
    elif extractor:
        t.extract = import_function(extractor, "extractor")
        t.extractor_name = extractor
    return t
