"""Every verb's result through the CLI: `--json` is one line of JSON and nothing else on stdout, no result
carries a private (`_`) key, and the formatter a verb declares turns that same data into text.

Each verb runs for real on tiny inputs, except the few whose shortest real run takes minutes: those are
stubbed with a result of the shape they return (STUBS), so the CLI's JSON path and their formatter are
still checked.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmlab.cli import VERBS, load_formatter, load_verb, main, print_result

NO_RESULT = {"chat"}
"""Verbs that talk as they run and return nothing to print."""

QUIET_TRAIN = ["--set", "train.device=cpu", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def env(tiny_data, cli_model, tiny_model, tmp_path_factory) -> types.SimpleNamespace:
    """What the argv builders use: a scratch directory, the shards, their world, a causal checkpoint and one
    whose context holds the world's conversations (for post-training)."""
    return types.SimpleNamespace(tmp=tmp_path_factory.mktemp("cli_json"), data=str(tiny_data),
                                 world=str(tiny_data.parent / "world"), ckpt=str(cli_model), chat=str(tiny_model))


def _quiet_main(argv: list[str]) -> None:
    """Run a verb to make another verb's input (the test drops what it prints)."""
    assert main(argv) == 0


def _pretrain_args(e, out: Path, *extra: str) -> list[str]:
    sets = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "train.steps=2",
            "train.batch_size=2", "train.block_size=16", "train.eval_batches=1", "train.progress=false",
            "train.precision=fp32", "train.threads=1"]
    return ["pretrain", "--data", e.data, "--out", str(out), *extra, *[a for s in sets for a in ("--set", s)]]


def _fill_mask(e) -> list[str]:
    _quiet_main(_pretrain_args(e, e.tmp / "mlm", "--objective", "mlm"))
    return ["fill-mask", "Question: Where was [MASK] born?", "--checkpoint", str(e.tmp / "mlm" / "checkpoint")]


def _export(e) -> Path:
    hf = e.tmp / "hf"
    if not hf.exists():
        _quiet_main(["export-hf", e.ckpt, str(hf)])
    return hf


def _rm_args(e, out: Path) -> list[str]:
    return ["rm", "train", "--init", e.chat, "--data", e.world, "--out", str(out), "--set", "train.steps=2",
            "--set", "train.batch_size=2", *QUIET_TRAIN]


def _rm_score(e) -> list[str]:
    _quiet_main(_rm_args(e, e.tmp / "rm_for_score"))
    return ["rm", "score", str(e.tmp / "rm_for_score" / "checkpoint"), "--prompt", "Who?", "--responses", "a,b",
            "--device", "cpu"]


def _fit(e) -> list[str]:
    path = e.tmp / "sweep.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "loss"])
        for c in (1e14, 1e15, 1e16):  # three IsoFLOP sets: the fit converges fast on them
            for n in (1e5, 3e5, 1e6, 3e6, 1e7):
                w.writerow([n, c / (6 * n), 1.8 + 400 / n**0.35 + 2000 / (c / (6 * n))**0.37])
    return ["scale", "fit", str(path), "--bootstrap", "0", "--out", str(e.tmp / "fit")]


def _hallucination_report(e) -> list[str]:
    _quiet_main(["hallucination", "eval", "--model", e.chat, "--world", e.world, "--questions", "2", "--samples", "2",
                 "--max_new_tokens", "4", "--device", "cpu", "--out", str(e.tmp / "hlab" / "eval")])
    return ["hallucination", "report", "--dir", str(e.tmp / "hlab")]


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [0.0, 1.0] if n else None}


def _rates(right: int, wrong: int, abstain: int) -> dict[str, Any]:
    n = right + wrong + abstain
    return {"n": n, "accuracy": _rate(right, n), "hallucination_rate": _rate(wrong, n),
            "abstention_rate": _rate(abstain, n)}


def _point(step: int) -> dict[str, Any]:
    return {"step": step, "val_loss": 0.3, "heldout_known": _rates(3, 1, 1), "unknown": _rates(0, 2, 2),
            "fit_unknown": _rates(4, 1, 0)}


def _after_turn(e, verb: str, *extra: str) -> list[str]:
    """A post-training verb from the causal checkpoint on the world, two tiny steps, two eval questions."""
    return [verb, "--init", e.chat, "--data", e.world, "--out", str(e.tmp / verb), "--eval_questions", "2",
            "--set", "train.steps=2", "--set", "train.batch_size=2", *QUIET_TRAIN, *extra]


RUNS: dict[str, Callable[[Any], list[str]]] = {
    "world": lambda e: ["world", "--out", str(e.tmp / "w"), "--people", "10", "--unknown", "2", "--arithmetic", "5",
                        "--arithmetic_test", "2"],
    "tokenizer train": lambda e: ["tokenizer", "train", "--input", str(Path(e.world) / "pretrain.jsonl"),
                                  "--out", str(e.tmp / "tok.json"), "--kind", "char"],
    "prepare": lambda e: ["prepare", "--input", str(Path(e.world) / "pretrain.jsonl"),
                          "--tokenizer", str(Path(e.data) / "tokenizer.json"), "--out", str(e.tmp / "shards")],
    "pretrain": lambda e: _pretrain_args(e, e.tmp / "pretrain"),
    "size": lambda e: ["size", "gpt2"],
    "sample": lambda e: ["sample", "--checkpoint", e.ckpt, "--prompt", "Question:", "--max_new_tokens", "4"],
    "generate": lambda e: ["generate", "--checkpoint", e.ckpt, "--prompt", "Question:", "--max_new_tokens", "4",
                           "--n", "2", "--seed", "0"],
    "chat": lambda e: ["chat", "--checkpoint", e.ckpt, "--max_new_tokens", "2", "--device", "cpu"],
    "fill-mask": _fill_mask,
    "export-hf": lambda e: ["export-hf", e.ckpt, str(e.tmp / "hf_out")],
    "import-hf": lambda e: ["import-hf", str(_export(e)), str(e.tmp / "imported")],
    "scale chinchilla": lambda e: ["scale", "chinchilla", "--flops", "1e21"],
    "scale sweep": lambda e: ["scale", "sweep", "--corpus", e.data, "--out", str(e.tmp / "sweep"), "--models", "16x1",
                              "--budgets", "3e8", "--min_steps", "5", "--batch_size", "4", "--block_size", "32",
                              "--eval_batches", "1", "--threads", "1", "--device", "cpu"],
    "scale fit": _fit,
    "scale lr-transfer": lambda e: ["scale", "lr-transfer", "--corpus", e.data, "--out", str(e.tmp / "lrt"),
                                    "--widths", "16,32", "--n_heads", "2", "--log2_lrs=-8,-6,-4", "--steps", "2",
                                    "--batch_size", "2", "--block_size", "16", "--eval_batches", "1",
                                    "--threads", "1", "--device", "cpu", "--parametrizations", "mup"],
    "sft": lambda e: _after_turn(e, "sft"),
    "rm train": lambda e: _rm_args(e, e.tmp / "rm"),
    "rm score": _rm_score,
    "dpo": lambda e: _after_turn(e, "dpo"),
    "rl": lambda e: _after_turn(e, "rl", "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "3",
                                "--epochs", "1"),
    "testtime run": lambda e: ["testtime", "--task", "world-qa", "--world", e.world, "--model", e.ckpt,
                               "--chat", "false", "--problems", "2", "--n", "1,2", "--methods", "greedy,sample,vote",
                               "--max_tokens", "4", "--time_problems", "0", "--device", "cpu",
                               "--out", str(e.tmp / "tt")],
    "hallucination eval": lambda e: ["hallucination", "eval", "--model", e.chat, "--world", e.world, "--questions", "2",
                                     "--samples", "2", "--max_new_tokens", "4", "--device", "cpu"],
    "hallucination report": lambda e: _hallucination_report(e),
    "hallucination snowball": lambda e: ["hallucination", "snowball", "--model", e.chat, "--world", e.world,
                                         "--people", "2", "--prefixes", "1", "--context", "0", "--max_new_tokens",
                                         "24", "--device", "cpu"],
    "doctor": lambda e: ["doctor", "--measure", "false", "--peaks", "false"],
    "ledger": lambda e: ["ledger", "--size", "tiny", "--only", "temperature-entropy", "--out", str(e.tmp / "ledger"),
                         "--work", str(e.tmp / "ledger_work"), "--readme", "null"],
    "sampling explain": lambda e: ["sampling", "explain", "--checkpoint", e.ckpt, "--prompt", "Question:",
                                   "--out", str(e.tmp / "explain.png")],
}

STUBS: dict[str, dict[str, Any]] = {
    "serve": {"model": "quickstart", "url": "http://127.0.0.1:8000", "steps": 120, "prompt_tokens": 40,
              "completion_tokens": 300},
    "quickstart": {"out": "runs/quickstart", "report": "runs/quickstart/report.md", "wall_s": 600.0,
                   "val_loss": 1.9, "qa_test_accuracy": 0.2},
    "testtime verifier": {"problems": 40, "n_samples": 160, "sample_accuracy": 0.4, "pairs": 60, "sampling_s": 3.1,
                          "sampling_flops": 2e12, "train_accuracy": 0.9, "heldout_accuracy": 0.8,
                          "train_flops": 5e12, "checkpoint": "runs/verifier/checkpoint", "wall_s": 9.0},
    "hallucination unknown-sft": {
        "model": "runs/quickstart/checkpoint", "world": "runs/quickstart/world", "seed": 0, "train_seed": 1337,
        "steps": 800, "eval_interval": 100, "answered_per_mix": 10, "abstain": True, "pretrained_known_share": 0.6,
        "pools": {"known": 20, "unknown": 10, "heldout_known": 5, "heldout_unknown_facts": 5, "abstain": 6,
                  "unknown_people": 6},
        "runs": [{"share": 0.5, "unknown_examples": 5, "answered": 10, "abstain_examples": 6, "wall_s": 9.0,
                  "early": _point(100), "converged": _point(800), "trajectory": [_point(100), _point(800)]}]},
    "hallucination penalty": {
        "model": "runs/quickstart/sft/checkpoint", "world": "runs/quickstart/world", "seed": 0, "prompts": 40,
        "rl": {"algo": "grpo", "steps": 100, "group_size": 8, "lr": 1e-4, "kl_coef": 0.05, "seed": 1337},
        "groups": {"heldout_test": 5, "unknown": 4, "heldout_train": 5},
        "before": {"heldout_test": _rates(1, 3, 1), "unknown": _rates(0, 3, 1), "heldout_train": _rates(5, 0, 0)},
        "runs": [{"penalty": 2.0, "threshold": 2 / 3, "wall_s": 30.0, "final": {"reward": 0.1, "kl": 0.02},
                  "rates": {"heldout_test": _rates(1, 1, 3), "unknown": _rates(0, 1, 3),
                            "heldout_train": _rates(5, 0, 0)}}]},
    "hallucination retrieval": {
        "model": "runs/quickstart/checkpoint", "world": "runs/quickstart/world", "k": 2, "stem": True, "seed": 0,
        "read_share": 0.0, "read_people": 0, "train_conversations": 750,
        "tokens": {"train_conversation_max": 103, "eval_prompt_max": 84},
        "retrieval": {"k": 2, "recall_at_k": _rate(8, 10), "recall_curve": {"1": _rate(7, 10), "2": _rate(8, 10)},
                      "person_at_k": {"qa_test": _rate(10, 10), "unknown": _rate(0, 4)}},
        "arms": {arm: {"groups": {"qa_test": _rates(2, 5, 3), "unknown": _rates(0, 2, 2)},
                       "by_found": {"qa_test": {"fact": _rates(2, 4, 2), "person": _rates(0, 1, 1),
                                                "nothing": _rates(0, 0, 0)},
                                    "unknown": {"fact": _rates(0, 0, 0), "person": _rates(0, 0, 0),
                                                "nothing": _rates(0, 2, 2)}},
                       "abstains_when_nothing_found": _rate(2, 4), "cites_when_answering": _rate(7, 9),
                       "citations": {"statements": 9, "citations": 10, "recall": _rate(2, 9),
                                     "precision": _rate(2, 10), "alce_recall": 0.2, "alce_precision": 0.2,
                                     "shown_ids": _rate(5, 10)}} for arm in ("plain", "retrieval")},
        "training": {arm: {"steps": 400, "conversations": 713, "val_loss": 0.3, "wall_s": 30.0, "cpu_s": 20.0}
                     for arm in ("plain", "retrieval")},
        "examples": [], "wall_s": 100.0, "cpu_s": 70.0},
}
"""Results of the verbs whose shortest real run is long (the quickstart; a verifier needs a model that is
right often enough to make pairs; the server runs until interrupted), in the shape they return."""


def test_every_verb_is_covered():
    assert set(RUNS) | set(STUBS) == set(VERBS) and not set(RUNS) & set(STUBS)


def _private_keys(x: Any, where: str = "result") -> list[str]:
    if isinstance(x, dict):
        return [f"{where}.{k}" for k in x if str(k).startswith("_")] + [
            p for k, v in x.items() for p in _private_keys(v, f"{where}.{k}")]
    if isinstance(x, list):
        return [p for v in x for p in _private_keys(v, where)]
    return []


@pytest.mark.parametrize("verb", list(VERBS))
def test_json_is_one_line_and_the_formatter_reads_it(verb, env, capsys, monkeypatch):
    if verb in STUBS:
        module, _cls, fn, *_ = VERBS[verb][1].split(":")
        monkeypatch.setattr(f"{module}.{fn}", lambda cfg: json.loads(json.dumps(STUBS[verb])))
        argv = verb.split()
    else:
        argv = RUNS[verb](env)
    if verb == "chat":
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    if verb in NO_RESULT:
        assert out == ""
        return
    assert out.endswith("\n") and out.count("\n") == 1, out
    result = json.loads(out)
    assert isinstance(result, dict) and not _private_keys(result)
    formatter = load_formatter(verb)
    if formatter is not None:
        text = formatter(result)
        assert isinstance(text, str) and text.strip() and not text.lstrip().startswith("{")


def test_verbs_that_compute_a_report_declare_a_formatter():
    plain = {verb for verb in VERBS if load_formatter(verb) is None}
    assert plain == {"quickstart", "world", "tokenizer train", "prepare", "pretrain", "chat", "import-hf",
                     "export-hf", "doctor", "serve"}
    for verb in VERBS:
        load_verb(verb)  # every target names a real module, config class and function


def test_print_result_writes_the_formatter_text_or_indented_json(capsys):
    print_result({"a": 1}, False, lambda r: f"a is {r['a']}")
    assert capsys.readouterr().out == "a is 1\n"
    print_result({"a": 1}, True, lambda r: "never")
    assert capsys.readouterr().out == '{"a": 1}\n'
    print_result({"a": 1}, False)
    assert capsys.readouterr().out == '{\n  "a": 1\n}\n'
    print_result(None, True)
    assert capsys.readouterr().out == ""


def test_without_json_the_cli_writes_the_formatter_text(capsys):
    from lmlab.plan.size import SizeConfig, format_table, size

    assert main(["size", "gpt2"]) == 0
    assert capsys.readouterr().out == format_table(size(SizeConfig("gpt2")))
