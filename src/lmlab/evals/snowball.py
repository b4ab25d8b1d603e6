"""`lmlab hallucination snowball`: do a model's own mistakes become evidence for what it writes next?

The self-delusion hypothesis (the "snowballing" of Zhang et al. 2023, "How Language Model Hallucinations
Can Snowball"): a model cannot tell text it was given from text it wrote, so one wrong statement in its
context pulls what follows along. Every fact of the built-in world is known, so this is measured exactly.

For each sampled person a biography prefix in the pretraining format ends with one planted statement:
another known person's value (the error prefix) or the true one (the control), all else identical
(`bio_facts`). The model continues both greedily, and every later fact it states is graded:

- dependent fact: the prefix names a wrong employer (whose company is in another city); does the
  employer city that follows go with the planted company or with the person's true one?
- independent facts (birth date, university, ...): are more of them wrong after an error than after
  the control, and do they match the donor's (identity confusion)? Chance = 1 / the attribute's pool.
- QA form: the prefix as context, then 'Question: ...\nAnswer:' about each later attribute.

With `mitigate`, the model is then trained on marked corrections (`post.correct`) on the QA-train
people and measured again on the same prefixes: the rates after, the share of error prefixes it
corrects (rightly), and the share of control prefixes it 'corrects' (false corrections).

With `rl` too (mitigation a), the corrected model is then trained by GRPO (`post.rl`, plain text, no chat
template) on error and control prefixes of the QA-train people, rewarded by `bio_facts.catch_reward` (+1 for
opening with the marker after an error, +1 more if it restores the truth, -1 for the marker after a control),
and measured a third time. RL starts from the corrected model: the pretrained one never writes the marker, so
every reply of a group would score the same and GRPO would have no signal.
"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.data import world_text as wt
from lmlab.data.world import format_qa, load_world
from lmlab.errors import LmlabError
from lmlab.evals.answers import classify
from lmlab.evals.binary import format_rate, rate
from lmlab.evals.bio_facts import DEPENDENT, MARKER, catch_reward, follows, grade, make_prefixes
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.io import write_json, write_jsonl
from lmlab.model import checkpoint as ckpt_io
from lmlab.post.correct import train_corrections
from lmlab.post.rl import RLConfig, rl
from lmlab.post.stage import PostTrainConfig, load_policy, setup, tokenizer_of
from lmlab.rundir import DEFAULT_CHECKPOINT, output_dir

OUT_FILES = ("answers.jsonl", "checkpoint", "snowball.json")
"""What `out` receives (checkpoint/ only with mitigate: the RL model with rl, else the corrected one); the last
is written last and marks it complete."""
CONDITIONS = ("error", "control")
SHORT = {"employer->employer_city": "employer -> its city", "employer_city->employer": "city -> employer"}
"""Table labels of the two dependent-fact tests."""
CHUNK = 256
"""Prompts per engine call: bounds the KV cache (a few hundred MB for the quickstart model)."""


@dataclass
class SnowballConfig:
    model: str = DEFAULT_CHECKPOINT
    """Pretrained lmlab checkpoint (plain format: biographies and 'Question: ... Answer:')."""
    world: str = "runs/quickstart/world"
    """World directory the checkpoint was trained on."""
    group: str = "qa_train"
    """Whose biographies: 'qa_train' (their QA pairs were in pretraining too: known best) or 'qa_test'."""
    people: int = 100
    """People measured (a seeded sample of the group; fewer if it has fewer)."""
    prefixes: int = 3
    """Prefix pairs (error + control) per person and planted attribute, each with its own context,
    templates and donor."""
    context: int = 1
    """True sentences before the planted one (0-3; the rest of the context is left for the continuation)."""
    qa: bool = True
    """Also ask, after each prefix, 'Question: ...' about every attribute the prefix leaves out."""
    max_new_tokens: int = 96
    """Longest continuation, in tokens (cut to what the context leaves)."""
    min_room: int = 32
    """Fewest tokens of the context a prefix must leave for its continuation (else an error: lower context)."""
    seed: int = 0
    """Seed of the people sample, the prefixes, templates and donors."""
    mitigate: bool = False
    """Train on marked corrections (mitigation b) after measuring, then measure again."""
    train_prefixes: int = 2
    """Training prefix pairs per QA-train person and attribute (drawn apart from the measured ones)."""
    replay: bool = True
    """Mix the world's pretraining documents into the correction training, so that it does not erase the facts
    of the people it never corrects, nor the question-answer format."""
    decision_weight: float = 1.0
    """Extra loss weight of the token after the planted statement (a new line for a correction, or not) in
    correction training (0: none)."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(
        steps=600, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=20, eval_interval=0))
    """Optimisation of the correction training (train.device is ignored: `device` applies)."""
    rl: bool = False
    """After the correction training (needs mitigate), reward catching the planted error by RL (mitigation a),
    then measure a third time."""
    rl_prefixes: int = 1
    """RL prefix pairs per QA-train person and attribute (drawn apart from the measured ones); error and control
    prefixes are both prompts."""
    rl_settings: RLConfig = field(default_factory=lambda: RLConfig(
        prompts_per_step=16, group_size=8, max_new_tokens=32, kl_coef=0.05, eval_questions=0,
        train=PostTrainConfig(steps=50, lr=3e-5, min_lr=3e-6, warmup_steps=5, log_interval=5)))
    """The RL run (GRPO by default): its init, data, prompts, out, reward and chat are set here (the corrected
    model, the prefixes, a temporary directory, catch_reward, plain text); train.device and threads are ignored."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    out: str | None = None
    """Directory for answers.jsonl, snowball.json and (mitigate) checkpoint/ (null: write nothing)."""
    force: bool = False
    """Write into an `out` that holds other files (they are left alone)."""

    def __post_init__(self) -> None:
        for name, lo, hi in (("people", 1, None), ("prefixes", 1, None), ("context", 0, 3),
                             ("max_new_tokens", 1, None), ("train_prefixes", 1, None), ("min_room", 1, None),
                             ("rl_prefixes", 1, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
                raise LmlabError(f"{name} must be an integer >= {lo}{f' and <= {hi}' if hi else ''}, got {value!r}")
        if not self.decision_weight >= 0:
            raise LmlabError(f"decision_weight must be >= 0, got {self.decision_weight}")
        if self.rl and not self.mitigate:
            raise LmlabError("rl needs mitigate: RL starts from the correction-trained model (the pretrained one "
                             "never writes the marker, so its rewards would not differ)")
        if self.group not in ("qa_train", "qa_test"):
            raise LmlabError(f"group must be 'qa_train' or 'qa_test', got {self.group!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise LmlabError(f"seed must be an integer >= 0, got {self.seed!r}")


def sample_people(world: dict[str, Any], cfg: SnowballConfig) -> list[dict[str, str]]:
    pool = [p for p in world["people"] if p["group"] == cfg.group]
    if not pool:
        raise LmlabError(f"the world in {cfg.world} has no {cfg.group} people to write biographies of; "
                         "generate one with people >= 2")
    random.Random(f"snowball:{cfg.seed}:people").shuffle(pool)
    return pool[: cfg.people]


def add_questions(rows: list[dict[str, Any]], rng: random.Random) -> None:
    """One question per later attribute of each prefix, phrasing drawn at random (the same for both conditions)."""
    for r in rows:
        r["questions"] = [(a, rng.choice(wt.QA_TEMPLATES[a]).format(name=r["person"])) for a in r["later"]]


def complete(engine: Engine, prompts: list[str], max_new_tokens: int, stop: list[str] | None = None,
             room: int = 1) -> list[str | None]:
    """Greedy continuations, each prompt starting a document as in pretraining (after the end-of-document
    token); None for a prompt that leaves fewer than `room` tokens of the model's context."""
    ids = [[engine.start_id, *engine.tok.encode(p)] for p in prompts]
    ctx = engine.cfg.max_seq_len
    fits = [k for k, i in enumerate(ids) if len(i) + room <= ctx]
    params = [SamplingParams(temperature=0, max_new_tokens=min(max_new_tokens, ctx - len(ids[k])), stop=stop or [])
              for k in fits]
    out: list[str | None] = [None] * len(prompts)
    for j in range(0, len(fits), CHUNK):
        done = engine.generate([ids[k] for k in fits[j:j + CHUNK]], params[j:j + CHUNK])
        for k, o in zip(fits[j:j + CHUNK], done):
            out[k] = o.completions[0].text
    return out


def ask_about(engine: Engine, world: dict[str, Any], rows: list[dict[str, Any]], cond: str) -> list[list[dict]]:
    """Per prefix: its questions asked after it, graded (right or not, and whether the answer goes with the
    planted value); a question that would not fit in the context with room for an answer is left out."""
    asked = [(i, a, q) for i, r in enumerate(rows) for a, q in r["questions"]]
    answers = complete(engine, [f"{rows[i][cond]}\n{format_qa(q)}" for i, _, q in asked], 16, ["\n"], room=8)
    by_row: list[list[dict]] = [[] for _ in rows]
    for (i, a, _), ans in zip(asked, answers):
        if ans is None:
            continue
        ans = ans.split("\n")[0].strip()
        truth = world["people_by_name"][rows[i]["person"]][a]
        by_row[i].append({"attribute": a, "answer": ans, "follows": follows(rows[i], a, ans, world),
                          "correct": classify(ans, truth, a, world["pools"].get(a, ())) == "correct"})
    return by_row


def measure(engine: Engine, world: dict[str, Any], rows: list[dict[str, Any]], cfg: SnowballConfig) -> list[dict]:
    """Per prefix and condition: the continuation, its grading, and (qa) the graded answers."""
    graded = []
    for cond in CONDITIONS:
        texts = complete(engine, [r[cond] for r in rows], cfg.max_new_tokens, room=cfg.min_room)
        if None in texts:
            p = rows[texts.index(None)][cond]
            raise LmlabError(f"a prefix leaves under {cfg.min_room} tokens of the model's {engine.cfg.max_seq_len}-"
                             f"token context for its continuation ({p[:60]!r}...); lower context")
        qa = ask_about(engine, world, rows, cond) if cfg.qa else None
        graded += [{"row": i, "condition": cond, "text": t, **grade(r, t, world), **({"qa": qa[i]} if qa else {})}
                   for i, (r, t) in enumerate(zip(rows, texts))]
    return graded


def _facts(rows: list[dict[str, Any]], graded: list[dict[str, Any]], key: str, dependent: bool) -> list[tuple]:
    """(row, fact) pairs: the dependent partner of the planted attribute, or every other later attribute."""
    return [(rows[g["row"]], f) for g in graded for f in g.get(key, [])
            if (DEPENDENT.get(rows[g["row"]]["attribute"]) == f["attribute"]) == dependent]


def _independent(pairs: list[tuple], chance: dict[str, float]) -> dict[str, Any]:
    n = len(pairs)
    return {"n": n, "wrong": rate(sum(not f["correct"] for _, f in pairs), n),
            "donor": rate(sum(f["follows"] and not f["correct"] for _, f in pairs), n),
            "chance_donor": sum(chance[f["attribute"]] for _, f in pairs) / n if n else None}


def summarise(rows: list[dict[str, Any]], graded: list[dict[str, Any]], chance: dict[str, float]) -> dict[str, Any]:
    """The rates of one condition's graded continuations (Wilson intervals throughout)."""
    n = len(graded)
    out: dict[str, Any] = {"prefixes": n, "dependent": {}}
    for planted, partner in DEPENDENT.items():
        sub = [g for g in graded if rows[g["row"]]["attribute"] == planted]
        stated = [f for _, f in _facts(rows, sub, "facts", True)]
        out["dependent"][f"{planted}->{partner}"] = {
            "prefixes": len(sub), "stated": rate(len(stated), len(sub)),
            "follows_error": rate(sum(f["follows"] for f in stated), len(stated)),
            "follows_truth": rate(sum(f["correct"] for f in stated), len(stated))}
    out["independent"] = _independent(_facts(rows, graded, "facts", False), chance)
    restated = [g["restated"] for g in graded if g["restated"]]
    out["restated"] = {"n": len(restated), "injected": rate(restated.count("injected"), len(restated)),
                       "truth": rate(restated.count("truth"), len(restated))}
    out["marked"] = rate(sum(g["any_correction"] for g in graded), n)
    out["corrected_to_truth"] = rate(sum(g["correction"] == "truth" for g in graded), n)
    out["unmatched_facts"] = sum(g["unmatched"] for g in graded)
    if any("qa" in g for g in graded):
        dep = [f for r, f in _facts(rows, graded, "qa", True) if r["attribute"] == "employer"]
        out["qa"] = {"employer->employer_city": {"n": len(dep), "follows_error": rate(sum(f["follows"] for f in dep),
                                                                                       len(dep)),
                                                  "follows_truth": rate(sum(f["correct"] for f in dep), len(dep))},
                     "independent": _independent(_facts(rows, graded, "qa", False), chance),
                     "asked": sum(len(g["qa"]) for g in graded),
                     "left_out": sum(len(rows[g["row"]]["questions"]) - len(g["qa"]) for g in graded)}
    return out


def stage_result(rows: list[dict[str, Any]], graded: list[dict[str, Any]], chance: dict[str, float]) -> dict:
    return {c: summarise(rows, [g for g in graded if g["condition"] == c], chance) for c in CONDITIONS}


def snowball(cfg: SnowballConfig) -> dict[str, Any]:
    """Measure snowballing on the checkpoint; with `mitigate`, train on marked corrections and measure again."""
    t0 = time.perf_counter()
    tc = dataclasses.replace(cfg.train, device=cfg.device)
    device = setup(tc)
    world = load_world(cfg.world, pretrain=cfg.mitigate and cfg.replay)
    if cfg.out and cfg.mitigate and cfg.force and (Path(cfg.out) / "checkpoint").exists():
        raise LmlabError(f"{cfg.out}/checkpoint exists; with force a new one is not written over it: remove it, "
                         "or choose another out")
    people = sample_people(world, cfg)
    rows = make_prefixes(world, people, cfg.prefixes, cfg.context, random.Random(f"snowball:{cfg.seed}:eval"))
    if not rows:
        raise LmlabError(f"no prefixes: no known person in {cfg.world} has a value different from the sampled people's")
    add_questions(rows, random.Random(f"snowball:{cfg.seed}:questions"))
    model, ck = load_policy(cfg.model, device)
    tok, _ = tokenizer_of(ck)
    chance = world["stats"]["chance"]
    graded = {"pretrained": measure(Engine(model, tok, device), world, rows, cfg)}
    result: dict[str, Any] = {
        "model": cfg.model, "world": cfg.world, "group": cfg.group, "people": len(people), "seed": cfg.seed,
        "prefixes_per_attribute": cfg.prefixes, "context": cfg.context, "prefixes": len(rows), "marker": MARKER,
        "stages": {"pretrained": stage_result(rows, graded["pretrained"], chance)}}
    weights = None
    if cfg.mitigate:
        result["training"] = mitigate(cfg, tc, world, rows, model, tok, device)
        weights = result["training"].pop("weights")
        graded["corrected"] = measure(Engine(model, tok, device), world, rows, cfg)
        result["stages"]["corrected"] = stage_result(rows, graded["corrected"], chance)
    if cfg.rl:
        result["rl"], weights, model = rl_stage(cfg, tc, world, rows, weights, model, ck, device)
        graded["rl"] = measure(Engine(model, tok, device), world, rows, cfg)
        result["stages"]["rl"] = stage_result(rows, graded["rl"], chance)
    result["examples"] = examples(rows, graded)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if cfg.out:
        result["files"] = write_outputs(cfg, rows, graded, result, weights, model, ck)
    return result


def mitigate(cfg: SnowballConfig, tc: PostTrainConfig, world: dict[str, Any], rows: list[dict[str, Any]],
             model, tok, device) -> dict[str, Any]:
    """Correction training on the QA-train people, on prefixes drawn apart from the measured `rows` (an
    identical error prefix is dropped): measured on other people, or on held-out prefixes of the same."""
    train_people = [p for p in world["people"] if p["group"] == "qa_train"]
    measured = {r["error"] for r in rows}
    drawn = make_prefixes(world, train_people, cfg.train_prefixes, cfg.context,
                          random.Random(f"snowball:{cfg.seed}:train"))
    info = train_corrections(model, tok, world, [r for r in drawn if r["error"] not in measured], tc, device,
                             cfg.replay, cfg.decision_weight)
    return {**info, "people": len(train_people), "seed": tc.seed, "lr": tc.lr, "decision_weight": cfg.decision_weight,
            "heldout": "other people" if cfg.group != "qa_train" else "held-out prefixes"}


def rl_prompts(cfg: SnowballConfig, world: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, tuple]:
    """Prompt -> (its row, condition): error and control prefixes of the QA-train people, a pair dropped when
    either text is measured (so RL never sees an evaluation prefix)."""
    people = [p for p in world["people"] if p["group"] == "qa_train"]
    measured = {r[c] for r in rows for c in CONDITIONS}
    drawn = make_prefixes(world, people, cfg.rl_prefixes, cfg.context, random.Random(f"snowball:{cfg.seed}:rl"))
    return {r[c]: (r, c) for r in drawn if not measured & {r[c] for c in CONDITIONS} for c in CONDITIONS}


def rl_stage(cfg: SnowballConfig, tc: PostTrainConfig, world: dict[str, Any], rows: list[dict[str, Any]],
             weights, model, ck, device) -> tuple[dict[str, Any], dict, Any]:
    """GRPO from the corrected model on `catch_reward`, through `post.rl` (whose run directory is temporary):
    (what it did, the RL weights, the RL model in eval mode)."""
    prompts = rl_prompts(cfg, world, rows)
    if not prompts:
        raise LmlabError("no RL prefixes: every QA-train prefix drawn is also measured; raise rl_prefixes")

    def snowball_catch(texts: list[str], replies: list[str]) -> list[float]:
        return [catch_reward(*prompts[t], r, world) for t, r in zip(texts, replies)]

    with tempfile.TemporaryDirectory(prefix="snowball-rl-") as tmp:
        init, data = Path(tmp) / "corrected", Path(tmp) / "prompts.jsonl"
        ckpt_io.save_checkpoint(init, weights, model.cfg, ck.tokenizer_path, verb="snowball",
                                meta={"stage": "correct", "init": str(cfg.model)})
        write_jsonl(data, [{"prompt": t} for t in prompts])
        rs = cfg.rl_settings
        rc = dataclasses.replace(rs, init=str(init), ref=None, data=str(data), prompts=None, out=str(Path(tmp) / "rl"),
                                 chat=False, eval_questions=0,
                                 train=dataclasses.replace(rs.train, device=cfg.device, threads=tc.threads))
        s = rl(rc, reward_fn=snowball_catch)
        rewards = [r["reward"] for r in map(json.loads, (Path(tmp) / "rl" / "metrics.jsonl").read_text().splitlines())
                   if "reward" in r]
        model, _ = load_policy(Path(tmp) / "rl" / "checkpoint", device)
    model.eval()
    info = {"algo": rs.algo, "steps": rs.train.steps, "prompts": len(prompts), "prompts_per_step": rs.prompts_per_step,
            "group_size": rs.group_size, "lr": rs.train.lr, "kl_coef": rs.kl_coef, "reward_first": rewards[0],
            "reward_last": rewards[-1], "reward_curve": rewards, "kl_last": s["final"]["kl"], "wall_s": s["wall_s"]}
    return info, ckpt_io.model_state(model), model


def examples(rows: list[dict[str, Any]], graded: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """The first employer prefix's continuations, error and control, per stage: to read, not to count."""
    first = next((i for i, r in enumerate(rows) if r["attribute"] == "employer"), 0)
    return [{"stage": s, "condition": g["condition"], "prefix": rows[first][g["condition"]], "continuation": g["text"]}
            for s, gs in graded.items() for g in gs if g["row"] == first]


def write_outputs(cfg: SnowballConfig, rows: list[dict[str, Any]], graded: dict[str, list[dict]],
                  result: dict[str, Any], weights, model, ck) -> dict[str, str]:
    """Every graded continuation (answers.jsonl), the corrected model (checkpoint/), the result (atomically)."""
    out = Path(str(cfg.out))
    files = {"answers": str(out / OUT_FILES[0]), "result": str(out / OUT_FILES[2])}
    if weights is not None:
        files["checkpoint"] = str(out / OUT_FILES[1])
    lines = [{"stage": s, **{k: v for k, v in rows[g["row"]].items() if k != "questions"}, **g}
             for s, gs in graded.items() for g in gs]
    with output_dir(out, "hallucination snowball", OUT_FILES, reads=[cfg.model, cfg.world], force=cfg.force) as tmp:
        write_jsonl(tmp / OUT_FILES[0], lines)
        if weights is not None:
            ckpt_io.save_checkpoint(tmp / OUT_FILES[1], weights, model.cfg, ck.tokenizer_path, verb="snowball",
                                    meta={"stage": "rl" if cfg.rl else "correct", "init": str(cfg.model),
                                          "steps": cfg.train.steps})
        write_json(tmp / OUT_FILES[2], {**result, "files": files})
    return files


def _rows(stage: dict[str, Any]) -> list[tuple[str, dict, dict]]:
    """(label, error cell, control cell) rows of one stage's table."""
    e, c = stage["error"], stage["control"]
    out = []
    for key, d in e["dependent"].items():
        cd, short = c["dependent"][key], SHORT[key]
        out += [(f"{short}: stated", d["stated"], cd["stated"]),
                (f"{short}: goes with planted", d["follows_error"], cd["follows_error"]),
                (f"{short}: true", d["follows_truth"], cd["follows_truth"])]
    out += [("other later facts: wrong", e["independent"]["wrong"], c["independent"]["wrong"]),
            ("other later facts: donor's", e["independent"]["donor"], c["independent"]["donor"]),
            ("planted fact restated as planted", e["restated"]["injected"], c["restated"]["injected"]),
            ("planted fact restated as truth", e["restated"]["truth"], c["restated"]["truth"]),
            (f"'{MARKER}' written", e["marked"], c["marked"]),
            ("corrected to the truth", e["corrected_to_truth"], c["corrected_to_truth"])]
    if "qa" in e:
        q, cq = e["qa"], c["qa"]
        out += [("QA employer_city: planted's", q["employer->employer_city"]["follows_error"],
                 cq["employer->employer_city"]["follows_error"]),
                ("QA employer_city: true", q["employer->employer_city"]["follows_truth"],
                 cq["employer->employer_city"]["follows_truth"]),
                ("QA other attributes: wrong", q["independent"]["wrong"], cq["independent"]["wrong"]),
                ("QA other attributes: donor's", q["independent"]["donor"], cq["independent"]["donor"])]
    return out


def format_snowball(res: dict[str, Any]) -> str:
    """Per stage: each rate after the error prefix and after the control (95% Wilson intervals, counts)."""
    lines = [f"snowball of {res['model']}: {res['people']} {res['group']} people, {res['prefixes']} prefix pairs "
             f"({res['prefixes_per_attribute']} per attribute, {res['context']} true sentence(s) before the planted "
             f"one), seed {res['seed']}"]
    if "training" in res:
        t = res["training"]
        lines.append(f"correction training: {t['steps']} steps on {t['sequences']} sequences of {t['people']} "
                     f"QA-train people, loss {t['loss_first']:.3f} -> {t['loss_last']:.3f} ({t['wall_s']:.0f} s); "
                     f"measured on {t['heldout']}")
    if "rl" in res:
        r = res["rl"]
        lines.append(f"rl ({r['algo']}, catch reward): {r['steps']} steps of {r['prompts_per_step']} of {r['prompts']} "
                     f"QA-train prefixes x {r['group_size']} replies, lr {r['lr']:g}, KL coef {r['kl_coef']:g}; "
                     f"mean reward {r['reward_first']:+.3f} -> {r['reward_last']:+.3f}, KL {r['kl_last']:.3f} "
                     f"({r['wall_s']:.0f} s)")
    for name, stage in res["stages"].items():
        lines += ["", f"{name + ':':<38}{'error prefix':<32}control prefix"]
        for label, e, c in _rows(stage):
            lines.append(f"  {label:<36}{format_rate(e):<22}{_n(e):<10}{format_rate(c):<22}{_n(c)}")
        ind = stage["error"]["independent"]
        if ind["chance_donor"] is not None:
            lines.append(f"  (donor's value by chance: {100 * ind['chance_donor']:.1f}%)")
    if "files" in res:
        lines.append(f"\nwrote {', '.join(res['files'].values())}")
    return "\n".join(lines)


def _n(r: dict[str, Any]) -> str:
    return f"{r['k']}/{r['n']}"
