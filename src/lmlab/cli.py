"""`lmlab VERB`: a table of verbs, each a config dataclass and one function.

The CLI stays thin: it builds the verb's config from defaults, an optional
YAML recipe, `--set key=value` overrides and per-field flags (whose help is the
field's docstring), calls the function, and prints its result as JSON.
Problems the user can fix are one `lmlab: error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmlab import __version__
from lmlab.config import add_arguments, from_args
from lmlab.errors import LmlabError


@dataclass
class Verb:
    help: str
    config: Callable[[], type]
    run: Callable[[], Callable[[Any], Any]]


def _world():
    from lmlab.data.world import WorldConfig, generate_world
    return WorldConfig, generate_world


def _tokenizer():
    from lmlab.data.tokenizer import TokenizerConfig, train_tokenizer
    return TokenizerConfig, train_tokenizer


def _prepare():
    from lmlab.data.shards import PrepareConfig, prepare
    return PrepareConfig, prepare


def _pretrain():
    from lmlab.train.trainer import PretrainConfig, pretrain
    return PretrainConfig, pretrain


def _sample():
    from lmlab.infer.sample import SampleConfig, run_sample
    return SampleConfig, run_sample


def _quickstart():
    from lmlab.quickstart import QuickstartConfig, quickstart
    return QuickstartConfig, quickstart


def _lazy(loader: Callable[[], tuple[type, Callable]]) -> Verb:
    return Verb("", lambda: loader()[0], lambda: loader()[1])


# verb -> (one-line purpose, loader of (config class, function)). Imports are lazy so
# `lmlab --help` and light verbs do not pay for torch.
VERBS: dict[str, tuple[str, Callable[[], tuple[type, Callable]]]] = {
    "quickstart": ("the whole life of a model on the built-in world: world, tokenizer, pretrain, "
                   "samples, report", _quickstart),
    "world": ("generate the built-in world: people, biographies, QA pairs, arithmetic", _world),
    "tokenizer train": ("train a byte-level BPE or character tokenizer, save tokenizer.json", _tokenizer),
    "prepare": ("tokenize text into uint16/uint32 token shards with a train/val split", _prepare),
    "pretrain": ("train a causal LM from scratch on prepared shards (resumable)", _pretrain),
    "sample": ("greedy or temperature samples from a checkpoint", _sample),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmlab", description="A small laboratory for the whole life of a language model.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lmlab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[str, Any] = {}
    for name, (purpose, loader) in VERBS.items():
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=purpose, description=purpose)
        p.set_defaults(_verb=name, _loader=loader)
        p.add_argument("--json", action="store_true", help="print the result as one JSON line")
        # Argument lists are built on demand (see main) so `lmlab --help` stays instant.
        p.set_defaults(_parser=p)
    return parser


def _fill(p: argparse.ArgumentParser, loader: Callable[[], tuple[type, Callable]]) -> type:
    cls, _ = loader()
    add_arguments(p, cls)
    return cls


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the verb without failing on its (not yet added) flags.
    known, _ = parser.parse_known_args(argv) if argv and argv[0] not in ("-h", "--help") else (None, None)
    if known is None or getattr(known, "_verb", None) is None:
        if argv and argv[0] not in ("-h", "--help", "--version") and known is not None:
            parser.print_help()
            return 2
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if argv else 2
    try:
        cls = _fill(known._parser, known._loader)
        args = parser.parse_args(argv)
        _, run = known._loader()
        cfg = from_args(cls, args)
        result = run(cfg)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        if args.json:
            print(json.dumps(result, default=str))
        elif isinstance(result, dict) and "samples" in result:
            for i, s in enumerate(result["samples"]):
                print(f"--- sample {i} ---\n{s}")
        else:
            print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
