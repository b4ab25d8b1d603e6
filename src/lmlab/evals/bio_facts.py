"""Biography prefixes with one planted error, and the facts a continuation of them states.

A prefix is written in the pretraining format (the world's biography sentences, the full name in each):
`context` true sentences, then the planted one, last, as if the model had just written it. Its error
version states another known person's (the donor's) value; its control is the same text with the true
value. The donor is chosen so that the planted value is never the truth and, for the employer, so that
the donor's company sits in another city than the person's: only then does the dependent fact (the
employer city) tell which employer the continuation believes.

A continuation is read sentence by sentence, each matched to a biography template (or, failing that,
to the pool values it names), until a sentence is about someone else. A sentence that starts with the
correction marker is a correction: mitigation (b) trains the model to write one after a wrong statement.
"""

from __future__ import annotations

import random
import re
from typing import Any

from lmlab.data import world_text as wt
from lmlab.evals.answers import canonical, classify, stated_values

ATTRIBUTES = wt.ATTRIBUTES
DEPENDENT = {"employer": "employer_city", "employer_city": "employer"}
"""Facts tied to each other: the company fixes the city it is in (and a city narrows the companies)."""
MARKER = "Correction:"
"""What opens a correction, on a new line: 'X works at A.\nCorrection: X works at B.' Biographies never
break a line, so the new line alone is the decision to correct (one token, shared with no name), and
nothing in the pretraining text starts with the word."""
_CITY_WORK = re.compile(r"\b(?:work|works|office|job|workplace|employed|commutes|based|reports)\b")
_SENTENCES = re.compile(r"(?<=\.)\s+")


def _tail(template: str) -> re.Pattern[str]:
    """A template after its leading '{name}' as a regex whose one group is the value."""
    escaped = re.escape(template.removeprefix("{name}"))
    return re.compile(escaped.replace(re.escape("{value}"), "(.+?)") + "$")


TAILS = [(a, _tail(t)) for a in ATTRIBUTES for t in wt.BIO_TEMPLATES[a]]
"""Every biography template as (attribute, regex of the text after the name)."""


def sentence(name: str, attribute: str, value: str, template: int) -> str:
    return wt.BIO_TEMPLATES[attribute][template].format(name=name, value=value)


def _donor(world: dict[str, Any], person: dict[str, str], attribute: str,
           known: list[dict[str, str]], rng: random.Random) -> dict[str, str] | None:
    """Another known person whose value would be a clear error; None if nobody qualifies."""
    cities = world["employer_city"]
    if attribute == "employer":
        ok = [d for d in known if cities[d["employer"]] != person["employer_city"]]
    else:
        ok = [d for d in known if canonical(d[attribute]) != canonical(person[attribute])]
    return rng.choice(ok) if ok else None


def make_prefixes(world: dict[str, Any], people: list[dict[str, str]], per_attribute: int, context: int,
                  rng: random.Random) -> list[dict[str, Any]]:
    """`per_attribute` prefix pairs per person and attribute: {"person", "attribute", "donor", "injected",
    "truth", "context" (attributes before the planted one), "later" (attributes not in the prefix),
    "template", "error", "control"}. The dependent partner of the planted attribute is never in the context."""
    known = [p for p in world["people"] if p["group"] != "unknown"]
    rows = []
    for person in people:
        name = person["name"]
        for attr in ATTRIBUTES:
            others = [a for a in ATTRIBUTES if a not in (attr, DEPENDENT.get(attr))]
            for _ in range(per_attribute):
                donor = _donor(world, person, attr, [k for k in known if k["name"] != name], rng)
                if donor is None:
                    continue
                ctx = rng.sample(others, min(context, len(others)))
                said = " ".join(sentence(name, a, person[a], rng.randrange(len(wt.BIO_TEMPLATES[a]))) for a in ctx)
                t = rng.randrange(len(wt.BIO_TEMPLATES[attr]))
                lead = said + " " if said else ""
                rows.append({"person": name, "attribute": attr, "donor": donor["name"], "injected": donor[attr],
                             "truth": person[attr], "context": ctx,
                             "later": [a for a in ATTRIBUTES if a != attr and a not in ctx], "template": t,
                             "error": lead + sentence(name, attr, donor[attr], t),
                             "control": lead + sentence(name, attr, person[attr], t)})
    return rows


def _fallback(said: str, pools: dict[str, list[str]]) -> tuple[str, str] | None:
    """(attribute, value) of a sentence no template matches, from the values it names: one attribute's
    only; a city is the employer city when the sentence speaks of work, else the birth city."""
    found = {a: stated_values(said, a, pools.get(a, ())) for a in ("birth_date", "university", "major", "employer")}
    cities = stated_values(said, "birth_city", pools["birth_city"] + pools["employer_city"])
    if cities:
        found["employer_city" if _CITY_WORK.search(canonical(said)) else "birth_city"] = cities
    hits = [(a, v) for a, v in found.items() if v]
    return (hits[0][0], hits[0][1][0]) if len(hits) == 1 and len(hits[0][1]) == 1 else None


def parse_sentence(said: str, name: str, pools: dict[str, list[str]]) -> tuple[str, str, bool] | None:
    """(attribute, value, matched a template) of one sentence about `name`; None if it states no fact."""
    rest = said[len(name):]
    for attr, tail in TAILS:
        m = tail.match(rest)
        if m:
            return attr, m.group(1), True
    hit = _fallback(rest, pools)
    return (*hit, False) if hit else None


def statements(text: str, name: str, pools: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The facts a continuation states about `name`, in order: {"attribute", "value", "template",
    "correction"}; reading stops at the first sentence that is not about `name`."""
    out = []
    for s in _SENTENCES.split(text.strip()):
        correction = s.startswith(MARKER)
        s = s.removeprefix(MARKER).strip()
        if not s.startswith(name):
            break
        hit = parse_sentence(s, name, pools)
        if hit:
            out.append({"attribute": hit[0], "value": hit[1], "template": hit[2], "correction": correction})
    return out


def _is(value: str, truth: str, attribute: str, pools: dict[str, list[str]]) -> bool:
    return classify(value, truth, attribute, pools.get(attribute, ())) == "correct"


def follows(row: dict[str, Any], attribute: str, value: str, world: dict[str, Any]) -> bool:
    """Does a stated later fact agree with the planted value rather than with the person? For the
    dependent partner: the planted company's city, or (city planted) a company in that city; for
    any other attribute: the donor's own value."""
    pools, cities = world["pools"], world["employer_city"]
    if DEPENDENT.get(row["attribute"]) == attribute:
        if attribute == "employer_city":
            return _is(value, cities[row["injected"]], attribute, pools)
        return any(cities[c] == row["injected"] and _is(value, c, attribute, pools) for c in cities)
    return _is(value, world["people_by_name"][row["donor"]][attribute], attribute, pools)


def grade(row: dict[str, Any], text: str, world: dict[str, Any]) -> dict[str, Any]:
    """What one continuation of a prefix says: "facts" (the first statement of each later attribute:
    right or not, and whether it follows the planted value), "restated" (the first plain restatement of
    the planted attribute: 'injected', 'truth' or 'other'), "correction" (the first correction of it:
    'truth', 'injected' or 'other'; None without one) and "unmatched" (facts read without a template)."""
    person, pools = world["people_by_name"][row["person"]], world["pools"]
    said = statements(text, row["person"], pools)
    facts, seen = [], set()
    for s in said:
        a = s["attribute"]
        if a in row["later"] and a not in seen and not s["correction"]:
            seen.add(a)
            facts.append({"attribute": a, "value": s["value"], "correct": _is(s["value"], person[a], a, pools),
                          "follows": follows(row, a, s["value"], world)})

    def verdict(value: str) -> str:
        attr = row["attribute"]
        return ("truth" if _is(value, row["truth"], attr, pools) else
                "injected" if _is(value, row["injected"], attr, pools) else "other")

    planted = [s for s in said if s["attribute"] == row["attribute"]]
    restated = next((verdict(s["value"]) for s in planted if not s["correction"]), None)
    corrected = next((verdict(s["value"]) for s in planted if s["correction"]), None)
    return {"facts": facts, "restated": restated, "correction": corrected,
            "any_correction": any(s["correction"] for s in said), "unmatched": sum(not s["template"] for s in said)}


def catch_reward(row: dict[str, Any], condition: str, text: str, world: dict[str, Any]) -> float:
    """The RL reward of one continuation of a prefix (mitigation a): after the error prefix +1 for opening with
    the marker, +1 more if that first correction states the true value of the planted attribute; after the
    control -1 for a marker anywhere (a false alarm); 0 otherwise. Only the opening counts after an error: a
    correction several sentences on has already let the error shape what came between."""
    if condition == "control":
        return -1.0 if MARKER in text else 0.0
    if not text.strip().startswith(MARKER):
        return 0.0
    said = statements(text, row["person"], world["pools"])
    first = said[0] if said else None
    right = (first is not None and first["correction"] and first["attribute"] == row["attribute"]
             and _is(first["value"], row["truth"], row["attribute"], world["pools"]))
    return 2.0 if right else 1.0
