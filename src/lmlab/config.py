"""Recipes: dataclass configs read from YAML, overridden from the command line.

Every verb of the CLI is driven by one dataclass. Its fields are documented
with attribute docstrings (a string literal on the line after the field), and
those docstrings are the `--help` text, so the code and the help never drift.
Values are layered: dataclass defaults < YAML recipe (`--config`) < each
`--set key=value` < explicit `--key value` flags. Unknown keys and values of
the wrong type are errors that name the key and the file. `--config` takes a
path or the name of a recipe shipped in configs/. A recipe value that names
code to import and run (a class's `CODE_KEYS`) is refused unless the command
line gives it or `--allow-code` vouches for the recipe: a recipe naming code is
code.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from lmlab.errors import LmlabError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where lossless."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise LmlabError(f"config key '{key}' in {where} may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise LmlabError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where, prefix=f"{key}.")
    origin = get_origin(tp)
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise LmlabError(f"config key '{key}' in {where} must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif origin is list and isinstance(value, (int, float)):  # `--n 8`: one number is a list of one
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise LmlabError(f"config key '{key}' in {where} must be a list, got {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, inner, key, where) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LmlabError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise LmlabError(f"config key '{key}' in {where} must be true or false, got {value!r}")
    if tp is int:
        return _to_int(value, key, where)
    if tp is float:
        if isinstance(value, bool):
            raise LmlabError(f"config key '{key}' in {where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise LmlabError(f"config key '{key}' in {where} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise LmlabError(f"config key '{key}' in {where} must be a string, got {value!r}")
        return str(value)
    return value


def _to_int(value: Any, key: str, where: str) -> int:
    """An exact integer: ints as they are, integral floats (3.0, 1e3) and numeric strings converted."""
    bad = LmlabError(f"config key '{key}' in {where} must be an integer, got {value!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    raise bad


def from_dict(cls: type, data: dict[str, Any], where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly nested) mapping, strictly."""
    if not isinstance(data, dict):
        raise LmlabError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), list(names), n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise LmlabError(f"unknown config key {prefix + str(key)!r} in {where}{hint}")
        f = names[key]
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):  # override the parent's own default, not the class's
                value = _merged(to_dict(default), value)
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    obj = cls(**kwargs)
    return obj


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s keys replaced, recursively for nested mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable mapping of a (nested) dataclass."""
    return dataclasses.asdict(obj)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise LmlabError(f"cannot set '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_value(raw: str, tp: Any = None) -> Any:
    """A command-line value: kept verbatim for string fields, else read as YAML (3, 1e-3, true, [1,2])."""
    if tp is not None and _strip_optional(tp)[0] is str:
        return None if raw in ("null", "None") and _strip_optional(tp)[1] else raw
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; a user means the number
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def parse_set(item: str, cls: type | None = None) -> tuple[str, Any]:
    """Parse one `--set key=value`; with `cls`, string fields keep their text verbatim."""
    if "=" not in item:
        raise LmlabError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    types_ = {name: tp for name, tp, _, _ in leaf_fields(cls)} if cls is not None else {}
    return key, parse_value(raw, types_.get(key))


def recipe_dirs() -> list[Path]:
    """Where the built-in recipes live: inside the installed package (a wheel carries a copy of configs/,
    see setup.py), then the source checkout's configs/ (an editable install or a run from the tree)."""
    here = Path(__file__).resolve().parent
    checkout = here.parents[1]  # src/lmlab -> the repository, when this file is run from one
    dirs = [here / "configs"] + ([checkout / "configs"] if (checkout / "pyproject.toml").is_file() else [])
    return [d for d in dirs if d.is_dir()]


def builtin_recipes() -> dict[str, Path]:
    """Recipe name -> file, for every recipe that ships with lmlab (`--config NAME`)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file: `path` itself, or, for a bare name (no directory, no suffix), the built-in recipe."""
    p = Path(path)
    if p.is_file():
        return p
    recipes = builtin_recipes()
    if len(p.parts) == 1 and not p.suffix and str(p) in recipes:
        return recipes[str(p)]
    names = ", ".join(recipes) or "none found"
    raise LmlabError(f"config file not found: {p} (a path to a YAML recipe, or a built-in recipe's name: {names})")


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line: what is wrong and where (its own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_recipe(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmlabError(f"config file {p} is not UTF-8 text (byte {e.start}): expected a YAML recipe") from None
    except OSError as e:
        raise LmlabError(f"config file {p} cannot be read: {e.strerror or e}") from None
    if "\x00" in text:
        raise LmlabError(f"config file {p} is a binary file (it holds NUL bytes): expected a YAML recipe")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LmlabError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmlabError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


@cache
def code_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the prefix that makes its value name code to import and run ('' = any value), for
    `cls` and its nested sections. A class declares its own in `CODE_KEYS`."""
    out = {prefix + k: marker for k, marker in getattr(cls, "CODE_KEYS", {}).items()}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(code_keys(tp, prefix + f.name + "."))
    return out


def _dotted_get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def refuse_code(cls: type, data: dict[str, Any], path: str | Path, overridden: set[str]) -> None:
    """A recipe that names code (a scorer, a reward function) would run it on load: refuse such a value unless
    the command line replaced it (the user's own choice) or `--allow-code` vouches for the recipe."""
    for key, marker in code_keys(cls).items():
        value = _dotted_get(data, key)
        parts = key.split(".")
        replaced = any(".".join(parts[:i]) in overridden for i in range(1, len(parts) + 1))
        if isinstance(value, str) and value and value.startswith(marker) and not replaced:
            raise LmlabError(f"recipe {path} names code to run ({key}: {value!r}), and a recipe that names code is "
                             f"code: pass --allow-code if you trust it, or give {key} on the command line")


def load(cls: type, path: str | Path | None = None, sets: list[str] | None = None,
         flags: dict[str, Any] | None = None, allow_code: bool = False) -> Any:
    """Layer defaults < YAML file < `--set` overrides < explicit flags."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    where = str(path) if path else "command line"
    overridden = set(flags or {})
    for item in sets or []:
        key, value = parse_set(item, cls)
        _set_dotted(data, key, value)
        overridden.add(key)
    if path and not allow_code:
        refuse_code(cls, data, path, overridden)
    for key, value in (flags or {}).items():
        _set_dotted(data, key, value)
    if sets or flags:
        where = f"{where} (with overrides)" if path else "command line"
    return from_dict(cls, data, where)


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, help) for every leaf field, nested included."""
    out = []
    hints = _hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.extend(leaf_fields(tp, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        out.append((prefix + f.name, hints[f.name], default, docs.get(f.name, "")))
    return out


_UNSET = object()


def add_arguments(parser: Any, cls: type, default_config: str | None = None) -> None:
    """Give an argparse parser `--config`, `--set` and one `--flag` per field."""
    parser.add_argument("--config", default=default_config,
                        help="YAML recipe: a path, or a built-in recipe's name "
                             f"({', '.join(builtin_recipes()) or 'none'}) (default: "
                             f"{default_config or 'none, built-in defaults'})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key, e.g. --set train.lr=1e-3 (repeatable)")
    if code_keys(cls):
        parser.add_argument("--allow-code", action="store_true",
                            help=f"let the recipe name code to import and run ({', '.join(code_keys(cls))}); "
                                 "a recipe that names code is code: allow only recipes you trust")
    docs = {name: doc for name, _tp, _default, doc in leaf_fields(cls)}
    positional = getattr(cls, "POSITIONAL", ())
    if positional and parser.usage:
        names = " ".join(f"[{n.upper()}]" for n in positional)
        parser.usage = parser.usage.replace(" [--config", f" {names} [--config", 1)
    for name in positional:  # e.g. `lmlab import-hf DIR`: the same field, without its flag
        parser.add_argument(f"pos:{name}", nargs="?", default=_UNSET, metavar=name.upper(),
                            help=docs[name].replace("%", "%%") + f" (or --{name})")
    for name, tp, default, doc in leaf_fields(cls):
        spellings = [f"--{name}"]
        if "_" in name:
            spellings.append(f"--{name.replace('_', '-')}")
        text = f"{doc} (default: {default!r})".replace("%", "%%")  # argparse formats help with %
        # A switch reads like one: `--force` alone means `--force true`.
        switch = {"nargs": "?", "const": "true"} if tp is bool else {}
        parser.add_argument(*spellings, dest=f"cfg:{name}", default=_UNSET, metavar="V", help=text, **switch)


def from_args(cls: type, args: Any) -> Any:
    """The config an argparse namespace (built by `add_arguments`) describes."""
    types_ = {name: tp for name, tp, _, _ in leaf_fields(cls)}
    flags = {}
    for k, v in vars(args).items():
        if k.startswith("cfg:") and v is not _UNSET:
            flags[k[4:]] = parse_value(v, types_.get(k[4:]))
    for k, v in vars(args).items():
        if k.startswith("pos:") and v is not _UNSET:
            if k[4:] in flags:
                raise LmlabError(f"{k[4:]} given twice: as an argument and as --{k[4:]}")
            flags[k[4:]] = parse_value(v, types_.get(k[4:]))
    return load(cls, args.config, args.set, flags, allow_code=getattr(args, "allow_code", False))


def check_int(name: str, value: Any, lo: int = 1) -> None:
    """A config field that must be an integer >= lo (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise LmlabError(f"{name} must be an integer >= {lo}, got {value!r}")


def check_numbers(name: str, values: Any, lo: float, hi: float) -> None:
    """A config field that must be a non-empty list of distinct numbers in [lo, hi]."""
    if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi for v in values):
        raise LmlabError(f"{name} must be a non-empty list of numbers in [{lo:g}, {hi:g}], got {values!r}")
    if len(set(values)) != len(values):
        raise LmlabError(f"{name} must not repeat a value, got {values!r}")


def check_open_share(name: str, value: Any) -> None:
    """A config field that must be a share strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise LmlabError(f"{name} must be a number in (0, 1), got {value!r}")
