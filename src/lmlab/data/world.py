"""The built-in world: a seeded synthetic corpus whose every fact is known.

Fictional people get six attributes (birth date, birth city, university,
major, employer, employer city). Known people are described by several
biographies each; "unknown" people appear in no biography at all. Because the
generator knows every fact and exactly what the pretraining text contains,
later stages can measure knowledge extraction, hallucination and abstention
exactly instead of guessing.

The design follows Allen-Zhu & Li (Physics of Language Models 3.1): several
biographies per person with templates re-drawn and sentence order shuffled,
the full name in every sentence, and documents shuffled across people.
Without that variety models memorise biographies but cannot answer questions
about people held out of QA training.

Determinism: every random choice comes from a `random.Random` seeded by a
string (`seed` plus a stream name), which Python hashes with SHA-512, not with
the salted `hash()`; nothing iterates a set. The same config therefore writes
byte-identical files on every machine, and changing e.g. `arithmetic` does not
reshuffle the people.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lmlab.data import world_text as wt
from lmlab.data.text import jsonl_records
from lmlab.errors import LmlabError
from lmlab.io import write_text

FORMAT_VERSION = 1
ATTRIBUTES = wt.ATTRIBUTES
GROUPS = ("qa_train", "qa_test", "unknown")
QA_FILES = {"qa_train": "qa_train.jsonl", "qa_test": "qa_test.jsonl", "unknown": "qa_unknown.jsonl"}
JSONL_FILES = (
    "bios.jsonl", "qa_train.jsonl", "qa_test.jsonl", "qa_unknown.jsonl",
    "arith_train.jsonl", "arith_test.jsonl", "pretrain.jsonl",
)


@cache
def name_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(first names, last names) built from the syllable pools, deduplicated in order."""
    firsts = dict.fromkeys(o + e for o in wt.FIRST_ONSETS for e in wt.FIRST_ENDINGS)
    lasts = dict.fromkeys(s + x for s in wt.LAST_STEMS for x in wt.LAST_SUFFIXES)
    return tuple(firsts), tuple(lasts)


def name_capacity() -> int:
    """How many distinct full names the syllable pools can produce."""
    firsts, lasts = name_pools()
    return len(firsts) * len(lasts)


@dataclass
class WorldConfig:
    """Recipe for `lmlab world`: how many people, documents and problems to generate."""

    out: str = "runs/world"
    """Directory the world's files are written to."""
    seed: int = 0
    """Random seed; the same seed and settings give byte-identical files."""
    people: int = 200
    """Number of people who appear in the biographies (split into QA-train and QA-test)."""
    unknown: int = 50
    """People who appear in no biography (facts and questions only), to measure hallucination."""
    bios_per_person: int = 5
    """Biographies per known person, each with re-drawn templates and shuffled sentence order."""
    qa_test_fraction: float = 0.5
    """Share of the known people whose questions are held out for testing (0..1)."""
    arithmetic: int = 2000
    """Number of arithmetic word problems in the training set."""
    arithmetic_test: int = 200
    """Number of held-out arithmetic word problems (no question shared with the training set)."""
    arith_min_steps: int = 2
    """Fewest operations in one arithmetic problem."""
    arith_max_steps: int = 4
    """Most operations in one arithmetic problem."""
    arith_max_number: int = 20
    """Largest starting quantity and largest number added or taken away; products stay below 10x this."""
    birth_year_min: int = 1950
    """Earliest birth year."""
    birth_year_max: int = 1999
    """Latest birth year."""
    pretrain_qa_share: float = 1.0
    """Share of QA-train pairs mixed into the pretraining text (0..1)."""
    pretrain_arith_share: float = 1.0
    """Share of the arithmetic training problems (with worked solutions) mixed into pretraining (0..1)."""
    arith_split_share: float = 0.0
    """Share of + and - steps whose worked solution goes in two moves through a round number
    (`27 + 8`: `27 + 3 = 30, then 30 + 5 = 35`) instead of one. With several routes to the same answer a
    model's slips on different routes differ, which is what majority vote over samples needs (0..1)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `LmlabError` naming the first field whose value is out of range."""
        _check_int("people", self.people, lo=2)
        _check_int("unknown", self.unknown, lo=0)
        _check_int("bios_per_person", self.bios_per_person, lo=1)
        _check_fraction("qa_test_fraction", self.qa_test_fraction)
        _check_int("arithmetic", self.arithmetic, lo=0)
        _check_int("arithmetic_test", self.arithmetic_test, lo=0)
        _check_int("arith_min_steps", self.arith_min_steps, lo=1, hi=10)
        _check_int("arith_max_steps", self.arith_max_steps, lo=self.arith_min_steps, hi=10)
        _check_int("arith_max_number", self.arith_max_number, lo=2, hi=10_000)
        _check_int("birth_year_min", self.birth_year_min, lo=1, hi=9999)
        _check_int("birth_year_max", self.birth_year_max, lo=self.birth_year_min, hi=9999)
        _check_fraction("pretrain_qa_share", self.pretrain_qa_share)
        _check_fraction("pretrain_arith_share", self.pretrain_arith_share)
        _check_fraction("arith_split_share", self.arith_split_share)
        capacity = name_capacity()
        if self.people + self.unknown > capacity:
            raise LmlabError(
                f"people + unknown = {self.people + self.unknown} is more than the {capacity} unique "
                f"names the world can generate; lower 'people' or 'unknown'"
            )


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LmlabError(f"world config '{name}' must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        expected = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise LmlabError(f"world config '{name}' must be {expected}, got {value}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise LmlabError(f"world config '{name}' must be a number in [0, 1], got {value!r}")


def _rng(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream per part of the world."""
    return random.Random(f"lmlab-world:{seed}:{stream}")


# ---------------------------------------------------------------- prompt formats


def format_qa(question: str, answer: str | None = None) -> str:
    """The QA document exactly as pretraining sees it.

    With `answer=None` this is the prompt, ending right where the answer
    starts, so `format_qa(q) + " " + a == format_qa(q, a)`: the answer is
    generated with its leading space, as BPE tokenised it in training.
    """
    prompt = f"Question: {question}\nAnswer:"
    return prompt if answer is None else f"{prompt} {answer}"


def format_arith(question: str, solution: str | None = None) -> str:
    """An arithmetic document; with `solution=None`, the prompt a solver continues."""
    prompt = f"Problem: {question}\nSolution:"
    return prompt if solution is None else f"{prompt} {solution}"


_ANSWER_RE = re.compile(r"The answer is\s+(-?(?:\d{1,3}(?:,\d{3})+|\d+))(?=\.(?!\d)|\s|$)", re.IGNORECASE)


def extract_answer(text: str) -> int | None:
    """The integer in the first `The answer is N.` line, or None if there is none.

    The first occurrence wins because a model that keeps generating after its
    answer tends to start a new problem. A number that is not a whole integer
    (`12.5`, `12a`) is no answer; thousands separators (`1,234`) are accepted
    so that answers from other models can be scored too.
    """
    m = _ANSWER_RE.search(text)
    return int(m.group(1).replace(",", "")) if m else None


# ---------------------------------------------------------------- people


def _birth_date(rng: random.Random, cfg: WorldConfig) -> str:
    month = rng.randrange(12)
    day = rng.randint(1, wt.MONTH_DAYS[month])
    year = rng.randint(cfg.birth_year_min, cfg.birth_year_max)
    return f"{wt.MONTHS[month]} {day}, {year}"


def _company_cities(seed: int) -> dict[str, str]:
    """Each company sits in one city, so a person's employer fixes the employer city."""
    rng = _rng(seed, "companies")
    return {company: rng.choice(wt.CITIES) for company in wt.COMPANIES}


def _make_people(cfg: WorldConfig, company_city: dict[str, str]) -> list[dict[str, str]]:
    """Known people first (QA-train, then QA-test), then the unknown ones."""
    rng = _rng(cfg.seed, "people")
    firsts, lasts = name_pools()
    picks = rng.sample(range(len(firsts) * len(lasts)), cfg.people + cfg.unknown)
    n_test = int(cfg.people * cfg.qa_test_fraction + 0.5)
    groups = ["qa_train"] * (cfg.people - n_test) + ["qa_test"] * n_test + ["unknown"] * cfg.unknown
    people = []
    for pick, group in zip(picks, groups):
        first, last = divmod(pick, len(lasts))
        employer = rng.choice(wt.COMPANIES)
        people.append({
            "name": f"{firsts[first]} {lasts[last]}",
            "group": group,
            "birth_date": _birth_date(rng, cfg),
            "birth_city": rng.choice(wt.CITIES),
            "university": rng.choice(wt.UNIVERSITIES),
            "major": rng.choice(wt.MAJORS),
            "employer": employer,
            "employer_city": company_city[employer],
        })
    return people


# ---------------------------------------------------------------- biographies and questions


def _render_bios(person: dict[str, str], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` biographies of one person: fresh templates per biography, shuffled order.

    Templates are dealt from a shuffled deck per attribute, so a person's
    biographies use different phrasings before any phrasing repeats.
    """
    decks = {a: rng.sample(range(len(wt.BIO_TEMPLATES[a])), len(wt.BIO_TEMPLATES[a])) for a in ATTRIBUTES}
    bios = []
    for b in range(count):
        chosen = {a: decks[a][b % len(decks[a])] for a in ATTRIBUTES}
        order = list(ATTRIBUTES)
        rng.shuffle(order)
        sentences = [
            wt.BIO_TEMPLATES[a][chosen[a]].format(name=person["name"], value=person[a]) for a in order
        ]
        bios.append({"person": person["name"], "templates": chosen, "text": " ".join(sentences)})
    return bios


def _make_qa(people: list[dict[str, str]], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """One question per person and attribute, phrasing drawn at random, grouped by person group."""
    qa: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    for person in people:
        for attr in ATTRIBUTES:
            template = rng.choice(wt.QA_TEMPLATES[attr])
            qa[person["group"]].append({
                "person": person["name"],
                "group": person["group"],
                "attribute": attr,
                "question": template.format(name=person["name"]),
                "answer": person[attr],
                "in_pretrain": False,
            })
    return qa


# ---------------------------------------------------------------- arithmetic


def _arith_step(rng: random.Random, value: int, cfg: WorldConfig) -> tuple[str, int, int]:
    """One operation that keeps the quantity a small non-negative integer: (op, k, result)."""
    cap = 10 * cfg.arith_max_number
    ops = ["+"]
    if value >= 2:
        ops.append("-")
    if 1 <= value and 2 * value <= cap:
        ops.append("x")
    op = rng.choice(ops)
    if op == "+":
        k = rng.randint(2, cfg.arith_max_number)
        return op, k, value + k
    if op == "-":
        k = rng.randint(2, min(cfg.arith_max_number, value))
        return op, k, value - k
    k = rng.randint(2, min(5, cap // value))
    return op, k, value * k


def _split(value: int, op: str, k: int) -> tuple[int, int] | None:
    """(first part of k, value after it) for adding or taking away k in two moves: first to the nearest
    multiple of ten on the way, else 10 at a time; None when k cannot be split that way (or op is x)."""
    if op == "x":
        return None
    k1 = (10 - value % 10) % 10 if op == "+" else value % 10
    if not 0 < k1 < k:
        k1 = 10 if k > 10 else 0
    if not 0 < k1 < k:
        return None
    return k1, value + k1 if op == "+" else value - k1


def _arith_problem(rng: random.Random, cfg: WorldConfig) -> dict[str, Any]:
    actor, items = rng.choice(wt.ARITH_ACTORS)
    value = rng.randint(2, cfg.arith_max_number)
    story = [f"A {actor} has {value} {items}."]
    solution = [f"The {actor} starts with {value} {items}."]
    n_steps = rng.randint(cfg.arith_min_steps, cfg.arith_max_steps)
    for i in range(n_steps):
        op, k, result = _arith_step(rng, value, cfg)
        sentence = rng.choice(wt.ARITH_STORY[op]).format(actor=actor, items=items, k=k)
        story.append(sentence if i == 0 else "Then " + sentence[0].lower() + sentence[1:])
        split = _split(value, op, k) if cfg.arith_split_share and rng.random() < cfg.arith_split_share else None
        if split is None:
            solution.append(wt.ARITH_SOLUTION_STEP[op].format(k=k, a=value, b=result))
        else:
            k1, mid = split
            solution.append(wt.ARITH_SOLUTION_SPLIT[op].format(k=k, a=value, k1=k1, c=mid, k2=k - k1, b=result))
        value = result
    story.append(f"How many {items} does the {actor} have now?")
    solution.append(f"The answer is {value}.")
    return {
        "question": " ".join(story),
        "solution": " ".join(solution),
        "answer": value,
        "steps": n_steps,
        "in_pretrain": False,
    }


def _make_arith(cfg: WorldConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Distinct problems, split into (train, test) so that no question is in both."""
    rng = _rng(cfg.seed, "arithmetic")
    wanted = cfg.arithmetic + cfg.arithmetic_test
    problems: dict[str, dict[str, Any]] = {}
    attempts = 0
    while len(problems) < wanted:
        attempts += 1
        if attempts > 20 * wanted + 1000:
            raise LmlabError(
                f"could only make {len(problems)} distinct arithmetic problems of the {wanted} asked for "
                "by 'arithmetic' + 'arithmetic_test'; lower them or raise 'arith_max_number'"
            )
        p = _arith_problem(rng, cfg)
        problems.setdefault(p["question"], p)
    ordered = list(problems.values())
    return ordered[cfg.arithmetic_test:], ordered[:cfg.arithmetic_test]


# ---------------------------------------------------------------- pretraining mixture


def _mark_share(rows: list[dict[str, Any]], share: float, rng: random.Random) -> list[dict[str, Any]]:
    """Flag `round(share * len(rows))` rows, chosen at random, as part of pretraining."""
    n = int(share * len(rows) + 0.5)
    chosen = sorted(rng.sample(range(len(rows)), n))
    for i in chosen:
        rows[i]["in_pretrain"] = True
    return [rows[i] for i in chosen]


def _pretrain_docs(cfg: WorldConfig, bios: list[dict[str, Any]], qa_train: list[dict[str, Any]],
                   arith_train: list[dict[str, Any]]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Biographies + the chosen QA-train pairs + chosen solved problems, shuffled together."""
    rng = _rng(cfg.seed, "pretrain")
    qa_docs = [
        format_qa(q["question"], q["answer"]) for q in _mark_share(qa_train, cfg.pretrain_qa_share, rng)
    ]
    arith_docs = [
        format_arith(p["question"], p["solution"])
        for p in _mark_share(arith_train, cfg.pretrain_arith_share, rng)
    ]
    texts = [b["text"] for b in bios] + qa_docs + arith_docs
    rng.shuffle(texts)
    counts = {"pretrain_bios": len(bios), "pretrain_qa": len(qa_docs), "pretrain_arith": len(arith_docs)}
    return [{"text": t} for t in texts], counts


# ---------------------------------------------------------------- writing and reading


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=indent)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def _pools(company_city: dict[str, str]) -> dict[str, list[str]]:
    """Every value an attribute can take (birth dates excepted: see `birth_years`)."""
    employer_cities = list(dict.fromkeys(company_city[c] for c in wt.COMPANIES))
    return {
        "birth_city": list(wt.CITIES),
        "university": list(wt.UNIVERSITIES),
        "major": list(wt.MAJORS),
        "employer": list(wt.COMPANIES),
        "employer_city": employer_cities,
    }


def _chance(cfg: WorldConfig, pools: dict[str, list[str]]) -> dict[str, float]:
    """Accuracy of a uniform guess from each attribute's pool: the floor any model must beat."""
    chance = {a: 1.0 / len(v) for a, v in pools.items()}
    chance["birth_date"] = 1.0 / (sum(wt.MONTH_DAYS) * (cfg.birth_year_max - cfg.birth_year_min + 1))
    return chance


def generate_world(cfg: WorldConfig) -> dict[str, Any]:
    """Generate the world into `cfg.out` and return its statistics.

    Files are written one by one atomically, `world.json` last, so a
    directory with a `world.json` is a complete world.
    """
    cfg.validate()
    company_city = _company_cities(cfg.seed)
    people = _make_people(cfg, company_city)
    known = [p for p in people if p["group"] != "unknown"]
    bio_rng = _rng(cfg.seed, "bios")
    bios = [bio for p in known for bio in _render_bios(p, cfg.bios_per_person, bio_rng)]
    qa = _make_qa(people, _rng(cfg.seed, "qa"))
    arith_train, arith_test = _make_arith(cfg)
    pretrain, mix_counts = _pretrain_docs(cfg, bios, qa["qa_train"], arith_train)

    pools = _pools(company_city)
    stats: dict[str, Any] = {
        "people_qa_train": sum(p["group"] == "qa_train" for p in people),
        "people_qa_test": sum(p["group"] == "qa_test" for p in people),
        "people_unknown": cfg.unknown,
        "bios": len(bios),
        "qa_train": len(qa["qa_train"]),
        "qa_test": len(qa["qa_test"]),
        "qa_unknown": len(qa["unknown"]),
        "arith_train": len(arith_train),
        "arith_test": len(arith_test),
        "pretrain_docs": len(pretrain),
        **mix_counts,
        "pretrain_chars": sum(len(d["text"]) for d in pretrain),
        "chance": _chance(cfg, pools),
    }
    facts = {
        "format": FORMAT_VERSION,
        "attributes": list(ATTRIBUTES),
        "people": people,
        "pools": pools,
        "employer_city": company_city,
        "birth_years": [cfg.birth_year_min, cfg.birth_year_max],
    }
    out = Path(cfg.out)
    write_text(out / "facts.json", _dumps(facts, indent=1) + "\n")
    _write_jsonl(out / "bios.jsonl", bios)
    for group, filename in QA_FILES.items():
        _write_jsonl(out / filename, qa[group])
    _write_jsonl(out / "arith_train.jsonl", arith_train)
    _write_jsonl(out / "arith_test.jsonl", arith_test)
    _write_jsonl(out / "pretrain.jsonl", pretrain)
    # `out` is left out: the file lives there, and two copies of a world should compare equal.
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    write_text(out / "world.json", _dumps({"format": FORMAT_VERSION, "config": config, "stats": stats},
                                          indent=2) + "\n")
    return stats


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmlabError(f"world file missing: {path}; regenerate it with `lmlab world`") from None
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8 (a ValueError too), nesting too deep
        raise LmlabError(f"world file {path} is not valid UTF-8 JSON: {e}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LmlabError(f"world file missing: {path}; regenerate it with `lmlab world`")
    # The shared reader names the file and line for bad UTF-8, bad JSON and lines that are not objects.
    return [row for _, row in jsonl_records(path)]


def load_world(directory: str | Path, pretrain: bool = False) -> dict[str, Any]:
    """Read a generated world back.

    Returns `config`, `stats`, `attributes`, `people` (list of fact dicts),
    `people_by_name`, `pools`, `employer_city`, `birth_years`, `bios`,
    `qa_train`, `qa_test`, `qa_unknown`, `arith_train`, `arith_test`, and,
    with `pretrain=True`, the pretraining documents under `pretrain`.
    """
    d = Path(directory)
    if not (d / "world.json").is_file():
        raise LmlabError(f"no world in {d} (world.json missing); generate one with `lmlab world --out {d}`")
    meta = _read_json(d / "world.json")
    if meta.get("format") != FORMAT_VERSION:
        raise LmlabError(f"world in {d} has format {meta.get('format')!r}, expected {FORMAT_VERSION}; "
                         "regenerate it with `lmlab world`")
    facts = _read_json(d / "facts.json")
    world: dict[str, Any] = {
        "config": meta["config"],
        "stats": meta["stats"],
        "attributes": facts["attributes"],
        "people": facts["people"],
        "people_by_name": {p["name"]: p for p in facts["people"]},
        "pools": facts["pools"],
        "employer_city": facts["employer_city"],
        "birth_years": facts["birth_years"],
    }
    for name in JSONL_FILES:
        if name != "pretrain.jsonl" or pretrain:
            world[name.removesuffix(".jsonl")] = _read_jsonl(d / name)
    return world
