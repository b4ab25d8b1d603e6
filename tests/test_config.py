"""Recipes (`lmlab.config`): attribute docstrings, YAML < --set < flags layering, strict typing."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmlab.config import (
    add_arguments,
    field_docs,
    from_args,
    from_dict,
    leaf_fields,
    load,
    parse_set,
    read_yaml,
)
from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig

# Test dataclasses live at module level so `inspect.getsource` can find them.


@dataclass
class Inner:
    width: int = 8
    """Width of the
    inner   thing."""
    rate: float = 0.5
    """A learning rate."""
    hidden_size: int = 4
    """Hidden size of the inner thing."""
    undocumented: int = 0


@dataclass
class Base:
    name: str = "run"
    """Name of the run."""
    seed: int = 1
    """Base seed doc."""


@dataclass
class Outer(Base):
    seed: int = 2
    """Overridden seed doc."""
    steps: int = 10
    """How many steps to take."""
    flag: bool = False
    """Whether to do the thing."""
    tags: list[int] = field(default_factory=list)
    """Some integers."""
    maybe: int | None = None
    """An optional integer."""
    warmup_steps: int = 3
    """Warmup steps."""
    note: str | None = None
    """An optional string."""
    inner: Inner = field(default_factory=Inner)
    """The inner section."""


@dataclass
class Percent:
    frac: float = 0.05
    """Held-out share of documents (5%)."""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- field_docs ---------------------------------------------------------------------------------


def test_field_docs_reads_attribute_docstrings_and_collapses_whitespace():
    docs = field_docs(Inner)
    assert docs["width"] == "Width of the inner thing."
    assert docs["rate"] == "A learning rate."
    assert "undocumented" not in docs


def test_field_docs_includes_inherited_fields_and_subclass_overrides():
    docs = field_docs(Outer)
    assert docs["name"] == "Name of the run."  # only documented in Base
    assert docs["seed"] == "Overridden seed doc."  # the subclass docstring wins
    assert docs["steps"] == "How many steps to take."
    assert docs["inner"] == "The inner section."


def test_field_docs_on_a_real_config():
    docs = field_docs(ModelConfig)
    assert docs["d_model"] == "Width of the residual stream."
    assert set(docs) == {f for f in ModelConfig.__dataclass_fields__}


def test_leaf_fields_flattens_nested_dataclasses_with_their_docs():
    leaves = {name: (default, doc) for name, _tp, default, doc in leaf_fields(Outer)}
    assert leaves["inner.width"] == (8, "Width of the inner thing.")
    assert leaves["name"] == ("run", "Name of the run.")
    assert leaves["tags"] == ([], "Some integers.")
    assert "inner" not in leaves


# --- load: layering -----------------------------------------------------------------------------


def test_defaults_when_nothing_given():
    cfg = load(Outer)
    assert cfg == Outer()


def test_layering_defaults_yaml_set_flags(tmp_path):
    path = write(tmp_path, "steps: 20\nname: from-yaml\ninner:\n  width: 16\n  rate: 0.25\n")
    cfg = load(Outer, path)
    assert (cfg.steps, cfg.name, cfg.inner.width, cfg.inner.rate) == (20, "from-yaml", 16, 0.25)
    assert cfg.warmup_steps == 3  # default survives

    cfg = load(Outer, path, sets=["steps=30", "inner.width=32"])
    assert (cfg.steps, cfg.name, cfg.inner.width, cfg.inner.rate) == (30, "from-yaml", 32, 0.25)

    cfg = load(Outer, path, sets=["steps=30", "inner.width=32"], flags={"steps": 40, "inner.rate": 0.125})
    assert (cfg.steps, cfg.name, cfg.inner.width, cfg.inner.rate) == (40, "from-yaml", 32, 0.125)


def test_later_set_wins_over_earlier_set():
    assert load(Outer, sets=["steps=1", "steps=2"]).steps == 2


def test_set_into_a_scalar_is_an_error(tmp_path):
    path = write(tmp_path, "steps: 5\n")
    with pytest.raises(LmlabError, match="steps"):
        load(Outer, path, sets=["steps.x=1"])


# --- strictness ---------------------------------------------------------------------------------


def test_unknown_key_names_key_file_and_close_match(tmp_path):
    path = write(tmp_path, "stpes: 3\n")
    with pytest.raises(LmlabError) as e:
        load(Outer, path)
    msg = str(e.value)
    assert "'stpes'" in msg
    assert str(path) in msg
    assert "did you mean steps" in msg


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    path = write(tmp_path, "inner:\n  widht: 3\n")
    with pytest.raises(LmlabError) as e:
        load(Outer, path)
    msg = str(e.value)
    assert "'inner.widht'" in msg
    assert str(path) in msg
    assert "inner.width" in msg


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(LmlabError) as e:
        from_dict(Outer, {"zzzzzz": 1})
    assert "zzzzzz" in str(e.value)
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize(
    ("yaml_text", "key", "what"),
    [
        ("steps: abc\n", "steps", "integer"),
        ("steps: 1.5\n", "steps", "integer"),
        ("steps: true\n", "steps", "integer"),
        ("flag: maybe\n", "flag", "true or false"),
        ("tags: {a: 1}\n", "tags", "list"),
        ("tags: [1, x]\n", "tags", "integer"),
        ("inner:\n  width: abc\n", "inner.width", "integer"),
        ("inner:\n  rate: [1]\n", "inner.rate", "number"),
        ("inner: 3\n", "inner", "mapping"),
        ("name: {a: 1}\n", "name", "string"),
        ("steps: null\n", "steps", "null"),
    ],
)
def test_type_errors_name_the_key_and_file(tmp_path, yaml_text, key, what):
    path = write(tmp_path, yaml_text)
    with pytest.raises(LmlabError) as e:
        load(Outer, path)
    msg = str(e.value)
    assert f"'{key}'" in msg
    assert str(path) in msg
    assert what in msg


def test_lossless_conversions_are_accepted(tmp_path):
    path = write(tmp_path, "steps: '12'\nflag: 'yes'\ntags: '1, 2,3'\ninner:\n  rate: 2\n  width: 4.0\n")
    cfg = load(Outer, path)
    assert cfg.steps == 12 and isinstance(cfg.steps, int)
    assert cfg.flag is True
    assert cfg.tags == [1, 2, 3]
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.width == 4 and isinstance(cfg.inner.width, int)


def test_optional_field_accepts_null_and_a_value(tmp_path):
    assert load(Outer, write(tmp_path, "maybe: null\n")).maybe is None
    assert load(Outer, write(tmp_path, "maybe: 7\n", "b.yaml")).maybe == 7
    with pytest.raises(LmlabError, match="'maybe'"):
        load(Outer, write(tmp_path, "maybe: abc\n", "c.yaml"))


def test_real_model_config_rejects_bad_type_with_section_prefix():
    @dataclass
    class Wrapper:
        model: ModelConfig = field(default_factory=ModelConfig)

    with pytest.raises(LmlabError, match="'model.d_model'"):
        from_dict(Wrapper, {"model": {"d_model": "wide"}})


def test_large_integer_is_kept_exactly():
    # e.g. a 64-bit seed: the data samplers take `seed % 2**64`, so seeds this large are meaningful.
    big = 2**53 + 1
    assert from_dict(Outer, {"seed": big}).seed == big


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "inf"])
def test_non_finite_integer_is_a_config_error(value):
    with pytest.raises(LmlabError, match="'steps'"):
        from_dict(Outer, {"steps": value})


# --- parse_set ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("a=3", "a", 3),
        ("a.b=0.5", "a.b", 0.5),
        ("a=1.0e-3", "a", 1e-3),
        ("a=true", "a", True),
        ("a=false", "a", False),
        ("a=[1,2]", "a", [1, 2]),
        ("a=null", "a", None),
        ("a=hello", "a", "hello"),
        ("a=", "a", ""),
        ("a=x=y", "a", "x=y"),
        (" a.b = 4", "a.b", 4),
        ("a=[unclosed", "a", "[unclosed"),  # invalid YAML is kept as the raw string
    ],
)
def test_parse_set_reads_values_as_yaml(item, key, value):
    k, v = parse_set(item)
    assert k == key
    assert v == value
    assert type(v) is type(value)


def test_parse_set_reads_exponent_without_dot_as_float():
    assert parse_set("lr=1e-3") == ("lr", 1e-3)


def test_exponent_without_dot_still_reaches_a_float_field_as_float():
    cfg = load(Outer, sets=["inner.rate=1e-3"])
    assert cfg.inner.rate == 1e-3 and isinstance(cfg.inner.rate, float)


@pytest.mark.parametrize("text", ["007", "yes", "1.10", "1e3", "[a, b]", "null"])
def test_string_fields_keep_command_line_text_verbatim(text):
    # YAML would read these as 7, True, 1.1, ..., so string fields must bypass it
    assert load(Outer, sets=[f"name={text}"]).name == text
    assert from_args(Outer, make_parser().parse_args(["--name", text])).name == text
    assert load(Outer, sets=[f"note={text}"]).note == (None if text == "null" else text)


def test_optional_string_accepts_null_from_flags():
    assert from_args(Outer, make_parser().parse_args(["--note", "null"])).note is None
    assert from_args(Outer, make_parser().parse_args(["--note", "None"])).note is None
    assert from_args(Outer, make_parser().parse_args(["--note", "x"])).note == "x"


def test_parse_set_rejects_missing_equals():
    with pytest.raises(LmlabError, match="key=value"):
        parse_set("steps")


# --- argparse -----------------------------------------------------------------------------------


def make_parser(default_config: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_arguments(parser, Outer, default_config)
    return parser


def test_from_args_dotted_and_dashed_spellings():
    parser = make_parser()
    args = parser.parse_args(["--inner.width", "3", "--warmup-steps", "5", "--inner.hidden-size", "6",
                              "--flag", "true", "--tags", "[4, 5]", "--maybe", "null"])
    cfg = from_args(Outer, args)
    assert cfg.inner.width == 3
    assert cfg.warmup_steps == 5
    assert cfg.inner.hidden_size == 6
    assert cfg.flag is True
    assert cfg.tags == [4, 5]
    assert cfg.maybe is None
    # the underscore spelling works too
    assert from_args(Outer, parser.parse_args(["--warmup_steps", "9"])).warmup_steps == 9
    assert from_args(Outer, parser.parse_args(["--inner.hidden_size", "9"])).inner.hidden_size == 9


def test_from_args_unset_flags_do_not_override_the_recipe(tmp_path):
    path = write(tmp_path, "steps: 20\ninner:\n  width: 16\n")
    cfg = from_args(Outer, make_parser().parse_args(["--config", str(path)]))
    assert (cfg.steps, cfg.inner.width, cfg.warmup_steps) == (20, 16, 3)


def test_from_args_layering_flags_beat_set_beats_yaml(tmp_path):
    path = write(tmp_path, "steps: 20\nname: yaml\n")
    parser = make_parser()
    cfg = from_args(Outer, parser.parse_args(["--config", str(path), "--set", "steps=30", "--steps", "40"]))
    assert (cfg.steps, cfg.name) == (40, "yaml")
    cfg = from_args(Outer, parser.parse_args(["--config", str(path), "--set", "steps=30"]))
    assert cfg.steps == 30


def test_default_config_is_used_when_no_config_flag(tmp_path):
    path = write(tmp_path, "steps: 77\n")
    cfg = from_args(Outer, make_parser(str(path)).parse_args([]))
    assert cfg.steps == 77


def test_from_args_type_error_names_the_flag_key():
    with pytest.raises(LmlabError, match="'inner.width'"):
        from_args(Outer, make_parser().parse_args(["--inner.width", "wide"]))


def test_help_text_contains_field_docstrings_and_defaults():
    text = " ".join(make_parser().format_help().split())
    assert "--inner.width" in text
    assert "--warmup-steps" in text
    assert "How many steps to take. (default: 10)" in text
    assert "Width of the inner thing. (default: 8)" in text
    assert "Name of the run. (default: 'run')" in text


def test_help_text_survives_percent_sign_in_docstring():
    parser = argparse.ArgumentParser(prog="t")
    add_arguments(parser, Percent)
    assert "(5%)" in parser.format_help()


# --- read_yaml ----------------------------------------------------------------------------------


def test_read_yaml_missing_file(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_read_yaml_directory_is_not_a_file(tmp_path):
    with pytest.raises(LmlabError, match="not found"):
        read_yaml(tmp_path)


def test_read_yaml_non_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(LmlabError, match="mapping") as e:
        read_yaml(path)
    assert str(path) in str(e.value)


def test_read_yaml_invalid_yaml(tmp_path):
    path = write(tmp_path, "a: [1, 2\nb: }\n")
    with pytest.raises(LmlabError, match="not valid YAML") as e:
        read_yaml(path)
    assert str(path) in str(e.value)


def test_read_yaml_empty_file_is_empty_mapping(tmp_path):
    assert read_yaml(write(tmp_path, "# just a comment\n")) == {}
    assert load(Outer, tmp_path / "recipe.yaml") == Outer()


def test_overriding_one_nested_field_keeps_the_parents_other_defaults():
    from lmlab.post.rm import RMConfig
    from lmlab.quickstart import QuickstartConfig

    rm = from_dict(RMConfig, {"train": {"lr": 1e-4}})
    assert rm.train.lr == 1e-4 and rm.train.steps == RMConfig().train.steps != 300
    qs = from_dict(QuickstartConfig, {"pretrain": {"train": {"steps": 7}}})
    assert qs.pretrain.train.steps == 7
    assert qs.pretrain.model == QuickstartConfig().pretrain.model  # not reset to ModelConfig()'s defaults
    assert qs.pretrain.train.batch_size == QuickstartConfig().pretrain.train.batch_size


# --- one value for a list field, binary recipes, built-in recipe names, recipes naming code ------


def test_a_single_value_is_a_list_of_one():
    parser = make_parser()
    assert from_args(Outer, parser.parse_args(["--tags", "8"])).tags == [8]
    assert from_args(Outer, parser.parse_args(["--tags", "1,2,4"])).tags == [1, 2, 4]
    assert from_args(Outer, parser.parse_args(["--tags", "[1, 2]"])).tags == [1, 2]
    assert from_dict(Outer, {"tags": 3}).tags == [3]
    with pytest.raises(LmlabError, match="'tags'.*integer"):
        from_dict(Outer, {"tags": 2.5})


def test_testtime_n_takes_one_number_a_comma_list_or_a_yaml_list(tmp_path):
    from lmlab.testtime.run import TestTimeConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser, TestTimeConfig)
    for raw, want in (("8", [8]), ("1,2,4", [1, 2, 4]), ("[1, 2, 4]", [1, 2, 4])):
        assert from_args(TestTimeConfig, parser.parse_args(["--n", raw])).n == want
    assert load(TestTimeConfig, write(tmp_path, "n: 16\n")).n == [16]


def test_a_binary_or_non_mapping_recipe_is_one_clear_error(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for path, match in ((binary, "not UTF-8 text"), (write(tmp_path, "a: 1\x00\n", "nul.yaml"), "binary file"),
                        (write(tmp_path, "just words\n", "s.yaml"), "must hold a mapping"),
                        (write(tmp_path, "a: [1\nb: }\n", "bad.yaml"), "not valid YAML")):
        with pytest.raises(LmlabError, match=match) as e:
            read_yaml(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_binary_recipe_through_the_cli_is_exit_2_without_traceback(tmp_path, capsys):
    from lmlab.cli import main

    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    assert main(["size", "--config", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmlab: error: config file") and err.count("\n") == 1 and "Traceback" not in err


def test_a_built_in_recipe_by_name_from_any_directory(tmp_path, monkeypatch):
    from lmlab.config import builtin_recipes, resolve_recipe
    from lmlab.train.trainer import PretrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    assert set(builtin_recipes()) == {p.stem for p in root.glob("*.yaml")}
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("shakespeare_char").read_bytes() == (root / "shakespeare_char.yaml").read_bytes()
    parser = argparse.ArgumentParser()
    add_arguments(parser, PretrainConfig)
    cfg = from_args(PretrainConfig, parser.parse_args(["--config", "shakespeare_char"]))
    assert cfg == load(PretrainConfig, root / "shakespeare_char.yaml")
    with pytest.raises(LmlabError, match="built-in recipe's name: .*shakespeare_char"):
        resolve_recipe("shakespear_char")
    (tmp_path / "shakespeare_char").write_text("steps: 1\n")  # a file of that name is the user's own
    assert resolve_recipe("shakespeare_char") == Path("shakespeare_char")


@dataclass
class Scored:
    scorer: str | None = None
    """A function to import."""
    reward: str = "gold"
    """'gold' or 'python:module:function'."""
    CODE_KEYS = {"scorer": "", "reward": "python:"}


@dataclass
class Holder:
    inner: Scored = field(default_factory=Scored)
    """A nested section that names code."""


def test_a_recipe_naming_code_is_refused_without_allow_code(tmp_path):
    recipe = write(tmp_path, "scorer: os:system\n")
    with pytest.raises(LmlabError, match="names code.*scorer: 'os:system'.*--allow-code"):
        load(Scored, recipe)
    assert load(Scored, recipe, allow_code=True).scorer == "os:system"
    nested = write(tmp_path, "inner:\n  reward: python:os:system\n", "nested.yaml")
    with pytest.raises(LmlabError, match="inner.reward"):
        load(Holder, nested)
    assert load(Holder, write(tmp_path, "inner:\n  reward: gold\n", "gold.yaml")).inner.reward == "gold"


def test_code_typed_on_the_command_line_is_the_users_choice(tmp_path):
    recipe = write(tmp_path, "scorer: os:system\nreward: python:os:getcwd\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser, Scored)
    with pytest.raises(LmlabError, match="reward"):  # the recipe's reward is still the recipe's
        from_args(Scored, parser.parse_args(["--config", str(recipe), "--scorer", "mine:f"]))
    cfg = from_args(Scored, parser.parse_args(["--config", str(recipe), "--scorer", "mine:f",
                                               "--set", "reward=python:mine:r"]))
    assert (cfg.scorer, cfg.reward) == ("mine:f", "python:mine:r")
    cfg = from_args(Scored, parser.parse_args(["--config", str(recipe), "--allow-code"]))
    assert cfg.scorer == "os:system"
    assert from_args(Scored, parser.parse_args(["--scorer", "mine:f"])).scorer == "mine:f"
    assert "--allow-code" not in make_parser().format_help()  # only verbs whose recipe can name code
