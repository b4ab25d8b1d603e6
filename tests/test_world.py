"""The built-in world: deterministic, internally consistent, and leak-free."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from lmlab.config import field_docs, from_dict
from lmlab.data import world_text as wt
from lmlab.data.world import (
    ATTRIBUTES,
    WorldConfig,
    extract_answer,
    format_arith,
    format_qa,
    generate_world,
    load_world,
    name_capacity,
)
from lmlab.errors import LmlabError

SMALL = dict(people=120, unknown=20, arithmetic=300, arithmetic_test=50)
FILES = [
    "arith_test.jsonl", "arith_train.jsonl", "bios.jsonl", "facts.json", "pretrain.jsonl",
    "qa_test.jsonl", "qa_train.jsonl", "qa_unknown.jsonl", "world.json",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("world")
    stats = generate_world(WorldConfig(out=str(out), seed=3, **SMALL))
    w = load_world(out, pretrain=True)
    w["returned_stats"] = stats
    w["texts"] = [d["text"] for d in w["pretrain"]]
    return w


def _names_regex(names: list[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b")


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "nested" / "b"
    generate_world(WorldConfig(out=str(a), seed=7, **SMALL))
    generate_world(WorldConfig(out=str(b), seed=7, **SMALL))
    assert sorted(p.name for p in a.iterdir()) == FILES
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_seed_gives_different_world(tmp_path: Path) -> None:
    generate_world(WorldConfig(out=str(tmp_path / "a"), seed=1, **SMALL))
    generate_world(WorldConfig(out=str(tmp_path / "b"), seed=2, **SMALL))
    for name in ("facts.json", "bios.jsonl", "pretrain.jsonl", "arith_train.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes(), name


def test_groups_and_counts(world: dict) -> None:
    groups = [p["group"] for p in world["people"]]
    assert groups.count("qa_train") == 60 and groups.count("qa_test") == 60 and groups.count("unknown") == 20
    stats = world["stats"]
    assert stats == json.loads(json.dumps(world["returned_stats"]))
    assert len(world["bios"]) == stats["bios"] == 120 * 5
    assert len(world["qa_train"]) == 60 * 6 and len(world["qa_test"]) == 60 * 6
    assert len(world["qa_unknown"]) == 20 * 6
    assert len(world["arith_train"]) == 300 and len(world["arith_test"]) == 50
    assert stats["pretrain_docs"] == len(world["pretrain"]) == 600 + 360 + 300
    assert stats["pretrain_chars"] == sum(len(t) for t in world["texts"])
    for group, rows in (("qa_train", world["qa_train"]), ("qa_test", world["qa_test"]),
                        ("unknown", world["qa_unknown"])):
        assert {r["group"] for r in rows} == {group}
        assert all(world["people_by_name"][r["person"]]["group"] == group for r in rows)


def test_names_unique_and_drawn_from_a_separate_pool(world: dict) -> None:
    names = [p["name"] for p in world["people"]]
    assert len(set(names)) == len(names)
    name_words = {w for n in names for w in n.split()}
    place_words = {w for pool in world["pools"].values() for v in pool for w in v.split()}
    assert not name_words & place_words
    assert name_capacity() >= 5000


def test_attributes_consistent(world: dict) -> None:
    pools, company_city = world["pools"], world["employer_city"]
    date_re = re.compile(r"^(" + "|".join(wt.MONTHS) + r") (\d{1,2}), (\d{4})$")
    lo, hi = world["birth_years"]
    for p in world["people"]:
        assert p["employer_city"] == company_city[p["employer"]]
        for attr in ("birth_city", "university", "major", "employer", "employer_city"):
            assert p[attr] in pools[attr]
        m = date_re.match(p["birth_date"])
        assert m, p["birth_date"]
        assert 1 <= int(m.group(2)) <= wt.MONTH_DAYS[wt.MONTHS.index(m.group(1))]
        assert lo <= int(m.group(3)) <= hi


def test_each_bio_states_all_six_facts_of_only_its_person(world: dict) -> None:
    people = world["people_by_name"]
    any_name = _names_regex(list(people))
    for bio in world["bios"]:
        person, text = people[bio["person"]], bio["text"]
        assert person["group"] in ("qa_train", "qa_test")
        assert text.startswith(person["name"]) and text.isascii()
        assert set(any_name.findall(text)) == {person["name"]}
        sentences = re.split(r"(?<=\.) (?=[A-Z])", text)
        assert len(sentences) == 6 and all(s.startswith(person["name"]) for s in sentences)
        for attr in ATTRIBUTES:
            rendered = wt.BIO_TEMPLATES[attr][bio["templates"][attr]].format(
                name=person["name"], value=person[attr])
            assert rendered in sentences, (attr, text)


def test_bios_vary_phrasing_and_order(world: dict) -> None:
    for attr in ATTRIBUTES:
        used = {bio["templates"][attr] for bio in world["bios"]}
        assert len(used) >= 10, attr
        questions = {q["question"].replace(q["person"], "{name}") for q in world["qa_train"]
                     if q["attribute"] == attr}
        assert len(questions) >= 3, attr
    first = world["bios"][:5]
    assert len({b["person"] for b in first}) == 1
    assert len({b["text"] for b in first}) == 5
    # A person's biographies use distinct phrasings before any repeats.
    assert len({b["templates"]["major"] for b in first}) == 5
    openings = {b["text"][len(b["person"]):len(b["person"]) + 12] for b in world["bios"]}
    assert len(openings) > 20


def test_unknown_people_never_appear_in_pretraining(world: dict) -> None:
    unknown = [p["name"] for p in world["people"] if p["group"] == "unknown"]
    assert unknown
    corpus = "\n".join(world["texts"])
    assert not [n for n in unknown if n in corpus]
    assert not [n for n in unknown if any(n in b["text"] for b in world["bios"])]


def test_qa_test_and_unknown_questions_never_in_pretraining(world: dict) -> None:
    texts = set(world["texts"])
    corpus = "\n".join(world["texts"])
    for row in world["qa_test"] + world["qa_unknown"]:
        assert not row["in_pretrain"]
        assert format_qa(row["question"], row["answer"]) not in texts
        assert row["question"] not in corpus
    qa_docs = {t for t in world["texts"] if t.startswith("Question: ")}
    assert qa_docs == {format_qa(r["question"], r["answer"]) for r in world["qa_train"]}


def test_pretraining_documents_are_shuffled_across_people_and_kinds(world: dict) -> None:
    texts = world["texts"]
    assert all(t and t == t.strip() and t.isascii() for t in texts)
    kinds = ["qa" if t.startswith("Question: ") else "arith" if t.startswith("Problem: ") else "bio"
             for t in texts[:60]]
    assert len(set(kinds)) == 3
    name = world["bios"][0]["person"]
    positions = [i for i, t in enumerate(texts) if re.match(re.escape(name) + r"\b", t)]
    assert len(positions) == 5 and positions[-1] - positions[0] > 50


def test_pretrain_shares_choose_that_many(tmp_path: Path) -> None:
    cfg = WorldConfig(out=str(tmp_path), seed=5, pretrain_qa_share=0.5, pretrain_arith_share=0.0, **SMALL)
    stats = generate_world(cfg)
    w = load_world(tmp_path, pretrain=True)
    assert stats["pretrain_qa"] == 180 and stats["pretrain_arith"] == 0
    texts = {d["text"] for d in w["pretrain"]}
    chosen = [r for r in w["qa_train"] if r["in_pretrain"]]
    assert len(chosen) == 180
    for r in w["qa_train"]:
        assert (format_qa(r["question"], r["answer"]) in texts) == r["in_pretrain"]
    assert not any(t.startswith("Problem: ") for t in texts)
    assert not any(r["in_pretrain"] for r in w["arith_train"])


_STEP = re.compile(r"(\d+) ([+x-]) (\d+) = (\d+)\.")


def test_arithmetic_solutions_are_correct(world: dict) -> None:
    problems = world["arith_train"] + world["arith_test"]
    for p in problems:
        start = int(re.match(r"A [a-z]+ has (\d+) ", p["question"]).group(1))
        steps = _STEP.findall(p["solution"])
        assert 2 <= len(steps) == p["steps"] <= 4
        value = start
        for a, op, k, b in steps:
            a, k, b = int(a), int(k), int(b)
            assert a == value
            assert b == {"+": a + k, "-": a - k, "x": a * k}[op]
            assert b >= 0
            assert str(k) in p["question"]
            value = b
        assert p["solution"].endswith(f"The answer is {value}.")
        assert extract_answer(p["solution"]) == value == p["answer"]
        assert format_arith(p["question"]) + " " + p["solution"] == format_arith(p["question"], p["solution"])
    train_q = {p["question"] for p in world["arith_train"]}
    test_q = {p["question"] for p in world["arith_test"]}
    assert len(train_q) == 300 and len(test_q) == 50 and not train_q & test_q
    texts = set(world["texts"])
    for p in world["arith_test"]:
        assert format_arith(p["question"], p["solution"]) not in texts
    assert {t for t in texts if t.startswith("Problem: ")} == {
        format_arith(p["question"], p["solution"]) for p in world["arith_train"]}


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", 42),
    ("12 + 7 = 19. The answer is 19.", 19),
    ("The answer is 0.", 0),
    ("The answer is -3.", -3),
    ("the answer is 7.", 7),
    ("The answer is 8", 8),
    ("The answer is 8\nProblem: more", 8),
    ("The answer is 1,234.", 1234),
    ("The answer is 5. Then a new problem. The answer is 9.", 5),
    ("The answer is 12.5.", None),
    ("The answer is 12a.", None),
    ("The answer is seven.", None),
    ("The answer is .", None),
    ("", None),
    ("no answer here 42", None),
])
def test_extract_answer(text: str, expected: int | None) -> None:
    assert extract_answer(text) == expected


def test_prompt_formats_end_where_the_answer_starts() -> None:
    assert format_qa("Who?") == "Question: Who?\nAnswer:"
    assert format_qa("Who?", "Ashbury") == format_qa("Who?") + " Ashbury"
    assert format_arith("How many?") == "Problem: How many?\nSolution:"
    assert format_arith("How many?", "The answer is 3.") == "Problem: How many?\nSolution: The answer is 3."


@pytest.mark.parametrize("field, value", [
    ("people", 1),
    ("people", -5),
    ("unknown", -1),
    ("bios_per_person", 0),
    ("qa_test_fraction", 1.5),
    ("qa_test_fraction", -0.1),
    ("arithmetic", -1),
    ("arithmetic_test", -2),
    ("arith_min_steps", 0),
    ("arith_max_steps", 1),
    ("arith_max_number", 1),
    ("birth_year_max", 1000),
    ("pretrain_qa_share", 2.0),
    ("pretrain_arith_share", -0.5),
])
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(LmlabError, match=f"'{field}'"):
        WorldConfig(**{field: value})
    with pytest.raises(LmlabError, match=field):
        from_dict(WorldConfig, {field: value})


def test_too_many_people_for_unique_names() -> None:
    with pytest.raises(LmlabError, match="people.*unique names|unique names.*'people'"):
        WorldConfig(people=name_capacity(), unknown=1)


def test_every_config_field_is_documented() -> None:
    docs = field_docs(WorldConfig)
    for name in WorldConfig.__dataclass_fields__:
        assert docs.get(name), name


def test_load_world_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="world.json"):
        load_world(tmp_path / "missing")
    generate_world(WorldConfig(out=str(tmp_path), people=4, unknown=1, arithmetic=3, arithmetic_test=2))
    (tmp_path / "bios.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="bios.jsonl:1: invalid JSON"):
        load_world(tmp_path)


def test_thousand_people_generate_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    stats = generate_world(WorldConfig(out=str(tmp_path), people=1000, unknown=100))
    assert time.perf_counter() - start < 5.0
    assert stats["bios"] == 5000 and stats["people_unknown"] == 100


def test_split_solutions_take_a_second_route_to_the_same_answer(tmp_path) -> None:
    """With arith_split_share, + and - steps may go through a round number in two moves; every move is
    right, the two parts add up to the number in the question, and the answer is unchanged."""
    base = WorldConfig(out=str(tmp_path / "a"), seed=3, **SMALL)
    split = WorldConfig(out=str(tmp_path / "b"), seed=3, arith_split_share=1.0, **SMALL)
    generate_world(base)
    generate_world(split)
    plain, routed = load_world(base.out), load_world(split.out)
    two_moves = re.compile(r"(\d+) ([+-]) (\d+) = (\d+), then (\d+) ([+-]) (\d+) = (\d+)\.")
    n_split = 0
    for p in routed["arith_train"] + routed["arith_test"]:
        for a, op, k1, c, c2, op2, k2, b in two_moves.findall(p["solution"]):
            a, k1, c, c2, k2, b = map(int, (a, k1, c, c2, k2, b))
            sign = 1 if op == "+" else -1
            assert op2 == op and c == c2 == a + sign * k1 and b == c + sign * k2 and b >= 0
            assert c % 10 == 0 or k1 == 10
            assert f"{k1 + k2}" in p["question"]
            n_split += 1
        assert extract_answer(p["solution"]) == p["answer"]
    assert n_split > 100
    # Splitting changes how solutions are written, not how many problems there are.
    assert len(routed["arith_train"]) == len(plain["arith_train"])
