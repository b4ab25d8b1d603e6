"""`lmlab VERB`: a table of verbs, each a config dataclass and one function.

The CLI stays thin: it builds the verb's config from defaults, an optional
YAML recipe, `--set key=value` overrides and per-field flags (whose help is the
field's docstring), calls the function, and prints its result.
Problems the user can fix are one `lmlab: error: ...` line and exit code 2.

A verb's function returns data only: a JSON-able dict (None for `chat`, which
talks as it goes). Its text form is declared beside it in `VERBS`, as an
optional fourth part of the target, "module:ConfigClass:function:formatter":
`formatter(result) -> str`, in the same module. The CLI writes that text, or
indented JSON for a verb without a formatter. With `--json` it writes the
result as one JSON line and nothing else: what the verb prints while it runs
(progress, stage banners) goes to stderr. So scripts and people read the same
data, and the functions stay quiet when called from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from lmlab import __version__
from lmlab.config import add_arguments, from_args
from lmlab.errors import LmlabError

# verb -> (one-line purpose, "module:ConfigClass:function[:formatter]"). Imports happen only for the verb
# that runs, so `lmlab --help` and light verbs do not pay for torch.
VERBS: dict[str, tuple[str, str]] = {
    "quickstart": ("the whole life of a model on the built-in world: world, tokenizer, pretrain, "
                   "samples, report", "lmlab.quickstart:QuickstartConfig:quickstart"),
    "world": ("generate the built-in world: people, biographies, QA pairs, arithmetic",
              "lmlab.data.world:WorldConfig:generate_world"),
    "tokenizer train": ("train a byte-level BPE or character tokenizer, save tokenizer.json",
                        "lmlab.data.tokenizer:TokenizerConfig:train_tokenizer"),
    "prepare": ("tokenize text into uint16/uint32 token shards with a train/val split",
                "lmlab.data.shards:PrepareConfig:prepare"),
    "pretrain": ("train a causal (next-token) or masked (--objective mlm) LM from scratch on shards (resumable)",
                 "lmlab.train.trainer:PretrainConfig:pretrain"),
    "size": ("will it fit, what will it cost: parameters, inference/training memory, FLOPs (no torch)",
             "lmlab.plan.size:SizeConfig:size:format_table"),
    "sample": ("greedy or temperature samples from a checkpoint",
               "lmlab.infer.generate:SampleConfig:run_sample:format_samples"),
    "generate": ("complete prompts with the KV-cache engine: every sampling control, logprobs, JSON",
                 "lmlab.infer.generate:GenerateConfig:run_generate:format_generate"),
    "chat": ("chat in the terminal with a checkpoint, replies streamed", "lmlab.infer.chat:ChatConfig:run_chat"),
    "fill-mask": ("a masked LM's top candidates, with probabilities, for each [MASK] in a text",
                  "lmlab.infer.fill_mask:FillMaskConfig:run_fill_mask:format_fill_mask"),
    "import-hf": ("convert a Hugging Face GPT-2 / Llama / Qwen2 / Mistral / BERT directory into a checkpoint",
                  "lmlab.model.hf_dirs:ImportHFConfig:import_hf"),
    "export-hf": ("write a checkpoint as a Hugging Face directory (loads with from_pretrained)",
                  "lmlab.model.hf_dirs:ExportHFConfig:export_hf"),
    "scale chinchilla": ("compute-optimal params and tokens for a budget: the 20x rule, Hoffmann et al. 2022, "
                         "Epoch AI 2024", "lmlab.scale.laws:ChinchillaConfig:chinchilla:format_chinchilla"),
    "scale sweep": ("train a grid of model sizes x token budgets (IsoFLOP sets), resumable; losses to a CSV",
                    "lmlab.scale.sweep:SweepConfig:sweep:format_sweep"),
    "scale fit": ("fit L(N, D) = E + A/N^alpha + B/D^beta to a sweep's CSV (bootstrap intervals, plots)",
                  "lmlab.scale.fit:FitConfig:fit:format_fit"),
    "scale lr-transfer": ("learning-rate sweeps at several widths under SP and muP: does the best lr transfer?",
                          "lmlab.scale.lr_transfer:LRTransferConfig:lr_transfer:format_lr_transfer"),
    "sft": ("supervised fine-tuning on conversations (loss on the assistant's tokens), from any checkpoint",
            "lmlab.post.sft:SFTConfig:sft:format_sft"),
    "rm train": ("train a reward model (backbone + scalar head) on preference pairs, Bradley-Terry loss; "
                 "`lmlab rm` for short", "lmlab.post.rm:RMConfig:train_rm:format_rm"),
    "rm score": ("score replies to a prompt with a trained reward model",
                 "lmlab.post.rm:RMScoreConfig:run_rm_score:format_rm_score"),
    "dpo": ("Direct Preference Optimization (sigmoid, IPO or hinge loss) against a frozen reference",
            "lmlab.post.dpo:DPOConfig:dpo:format_dpo"),
    "rl": ("RLHF: PPO or GRPO against a reward model, the world's gold reward or a Python function, KL-leashed",
           "lmlab.post.rl:RLConfig:rl:format_rl"),
    "testtime run": ("best-of-N (logprob, reward model, scorer) and majority vote: accuracy against N and cost; "
                     "`lmlab testtime` for short", "lmlab.testtime.run:TestTimeConfig:run_testtime:format_testtime"),
    "testtime verifier": ("train an outcome verifier (reward model) on the model's own graded samples",
                          "lmlab.testtime.verifier:VerifierConfig:train_verifier:format_verifier"),
    "doctor": ("this machine (CPU, flags, threads, compiler, torch), the native paths built and chosen, "
               "matmul peaks", "lmlab.doctor:DoctorConfig:doctor"),
    "hallucination eval": ("how often a model makes up facts about the world, is its confidence calibrated, "
                           "and do log-probability or sample consistency flag it",
                           "lmlab.evals.hallucination:HallucinationConfig:hallucination_eval:format_hallucination"),
    "hallucination unknown-sft": ("does SFT on facts the model does not know teach it to make things up? "
                                  "(Gekhman et al. 2024: the Unknown share swept)",
                                  "lmlab.evals.unknown_sft:UnknownSFTConfig:unknown_sft:format_unknown_sft"),
    "hallucination penalty": ("GRPO with a reward that punishes made-up answers more than abstaining, swept: "
                              "fewer hallucinations for how many lost answers?",
                              "lmlab.evals.wrong_penalty:PenaltyConfig:penalty_sweep:format_penalty"),
    "hallucination retrieval": ("mitigation: fine-tune with and without retrieved, cited passages (BM25) and grade "
                                "hallucination, abstention, recall@k and ALCE citation recall/precision",
                                "lmlab.evals.grounded:RetrievalConfig:retrieval_experiment:format_retrieval"),
    "hallucination snowball": ("does one planted wrong fact pull what the model writes next along (snowballing, "
                               "Zhang et al. 2023); optional training on marked corrections, before/after",
                               "lmlab.evals.snowball:SnowballConfig:snowball:format_snowball"),
    "hallucination report": ("every hallucination result under a directory (eval, experiments) with its plots "
                             "in one markdown page",
                             "lmlab.report.hallucination_report:HallucinationReportConfig:hallucination_report:"
                             "format_report"),
    "serve": ("an OpenAI-compatible server with continuous batching, /metrics and a sampling playground "
              "(`lmlab serve CKPT`)", "lmlab.serve.run:ServeConfig:run_serve"),
    "ledger": ("test claims about language models by measurement: docs/LEDGER.md and docs/ledger.json, "
               "each row with its interval, verdict and command", "lmlab.ledger.run:LedgerConfig:ledger:format_ledger"),
    "sampling explain": ("show the next-token distribution under temperatures, top-k, top-p, min-p (+ PNG)",
                         "lmlab.infer.explain:ExplainConfig:run_explain:format_explain"),
}


def load_verb(verb: str) -> tuple[type, Callable[[Any], Any]]:
    """The config class and the function behind a verb."""
    module, cls, fn, *_ = VERBS[verb][1].split(":")
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, fn)


def load_formatter(verb: str) -> Callable[[Any], str] | None:
    """The function that turns a verb's result into text, or None: the result then prints as JSON."""
    module, _cls, _fn, *formatter = VERBS[verb][1].split(":")
    return getattr(importlib.import_module(module), formatter[0]) if formatter else None


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per verb (their flags are added on demand)."""
    parser = argparse.ArgumentParser(prog="lmlab",
                                     description="A small laboratory for the whole life of a language model.")
    parser.add_argument("--version", action="version", version=f"lmlab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[str, Any] = {}
    verbs: dict[str, argparse.ArgumentParser] = {}
    for name, (purpose, _target) in VERBS.items():
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=purpose, description=purpose,
                              usage=f"lmlab {name} [--config YAML] [--set KEY=VALUE ...] [--FIELD VALUE ...]")
        p.add_argument("--json", action="store_true", help="print the result as one JSON line")
        verbs[name] = p
    return parser, verbs


DEFAULT_SUBVERB = {"rm": "train", "testtime": "run"}
"""A group that is also a verb on its own: `lmlab rm ...` means `lmlab rm train ...`, `lmlab testtime ...`
means `lmlab testtime run ...`."""


def _which_verb(argv: list[str]) -> str | None:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}"
    if argv and argv[0] in VERBS:
        return argv[0]
    return None


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """Warnings as the CLI's users read them: one `lmlab: warning:` line, not a file path and a code line."""
    return f"lmlab: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _one_line_warning
    if argv and argv[0] in DEFAULT_SUBVERB and not (len(argv) > 1 and f"{argv[0]} {argv[1]}" in VERBS):
        argv.insert(1, DEFAULT_SUBVERB[argv[0]])
    parser, verbs = build_parser()
    verb = _which_verb(argv)
    if verb is None:
        parser.parse_args(argv)  # prints help / usage errors and exits
        parser.print_help()
        return 2
    try:
        cls, run = load_verb(verb)
        formatter = load_formatter(verb)
        # Only the chosen verb pays for its imports and its per-field flags.
        add_arguments(verbs[verb], cls)
        args = parser.parse_args(argv)
        cfg = from_args(cls, args)
        # With --json, stdout carries only the JSON line: whatever the verb prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = run(cfg)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        _leave_if_peer_lost(2)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away while the verb was printing (`lmlab chat | head`)
        return _stdout_closed()
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 prints the run's result
        return 0
    try:
        print_result(result, args.json, formatter)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()
    return 0


def _leave_if_peer_lost(code: int) -> None:
    """A torchrun worker whose peer died exits now, skipping the process group's destructors (see
    `lmlab.train.distributed.peer_lost`). Looked up in sys.modules: a run that never trained imports no torch."""
    distributed = sys.modules.get("lmlab.train.distributed")
    if distributed is not None and distributed.peer_lost():
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


def print_result(result: Any, as_json: bool, formatter: Callable[[Any], str] | None = None) -> None:
    """The verb's result on stdout: one JSON line, its formatter's text, or indented JSON."""
    if result is None:
        return
    if as_json:
        print(json.dumps(result, default=str))
    elif formatter is not None:
        text = formatter(result)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        print(json.dumps(result, indent=2, default=str))


def _stdout_closed() -> int:
    """Exit quietly when whoever reads stdout has stopped (`lmlab generate --json | head -c 10`).

    Returns 141 (128 + SIGPIPE), what the shell reports for `cat` or `yes` ended the same way: the
    output was cut short, and `set -o pipefail` scripts should see lmlab as they see coreutils.
    """
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush from failing too.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())
