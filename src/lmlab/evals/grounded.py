"""`lmlab hallucination retrieval`: does answering from retrieved, cited sources stop a model making facts up?

Hypothesis 2 of issue 20 (knowledge mismatch): a model fine-tuned to answer questions whose facts it never
learnt well is taught to guess. Grounding the answer in passages that are in the prompt, and citing them,
replaces recall from the weights with reading. The experiment fine-tunes the same pretrained checkpoint
twice with `lmlab sft`, on the same questions (QA-train people, and the training half of the unknown people
with "I don't know."):

- `plain`: the question alone (the quickstart's SFT data, `world_chat.sft_conversations`);
- `retrieval`: the k best BM25 passages (one biography sentence each, with its id) before the question; the
  reply is the value followed by the ids of the passages that state it, or "I don't know." when none does
  (`data.grounded_chat`).

Both are graded on people neither saw in fine-tuning: QA-test people (known only from biographies) and the
held-out half of the unknown people. Reported, with 95% Wilson intervals: accuracy, hallucination and
abstention per group and arm, the same split by what retrieval found (the asked fact, only other facts of the
person, nothing about the person), retrieval recall@k, and ALCE citation recall and precision.

QA-train facts are in the weights (their QA pairs were pretraining text), so fine-tuning on them alone lets
the model answer from memory and copy only the format. `read_share` moves a share of the QA-test people into
both arms' fine-tuning (the rest are graded): facts the model cannot recall, which it can only read.

Nothing is truncated: every training conversation must fit the model's context, and every evaluation prompt
must leave `max_new_tokens` of room, or the run stops before training and says so.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmlab.data.conversations import encode, prompt_ids
from lmlab.data.grounded_chat import cited_ids, grounded_conversation, grounded_prompt, split_citations, stating
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.world import load_world
from lmlab.data.world_chat import heldout_people, sft_conversations, unknown_split
from lmlab.data.world_passages import Passage, world_passages
from lmlab.errors import LmlabError
from lmlab.evals.answers import classify
from lmlab.evals.binary import format_rate, rate
from lmlab.evals.citations import Claim, Statement, alce, world_support
from lmlab.evals.hallucination import RATES, ask, chat_template_gap, group_rates
from lmlab.evals.retrieval import Retriever, about_person, recall_at_k
from lmlab.infer.engine import Engine
from lmlab.io import write_json, write_jsonl
from lmlab.model.checkpoint import load_checkpoint
from lmlab.post.sft import SFTConfig, sft
from lmlab.post.stage import PostTrainConfig
from lmlab.rundir import output_dir, require_checkpoint

ARMS = ("plain", "retrieval")
GROUPS = ("qa_test", "unknown")
FOUND = ("fact", "person", "nothing")
"""What retrieval found for a question: a passage stating the asked fact, only other facts of the person,
nothing about the person."""
RECALL_KS = (1, 2, 3, 5, 10)
OUT_FILES = ("train_plain.jsonl", "train_retrieval.jsonl", "answers.jsonl", "retrieval.json")
"""What `out` receives; the last is written last and marks the directory complete."""


@dataclass
class RetrievalConfig:
    model: str = "runs/quickstart/checkpoint"
    """Pretrained checkpoint both arms are fine-tuned from."""
    world: str = "runs/quickstart/world"
    """World whose biographies are the passages and whose questions are asked."""
    k: int = 2
    """Passages retrieved per question (the quickstart's 128-token context holds 2 with a question and reply)."""
    stem: bool = True
    """Stem words (Snowball English, PyStemmer) before BM25 matching."""
    read_share: float = 0.0
    """Share of the QA-test people (seeded by train.seed) whose questions join the fine-tuning set of both arms;
    the rest are graded. QA-train facts are recalled from the weights, so a model fine-tuned on them alone
    need not read its passages; facts it does not recall make it read (0: the QA-test people all held out)."""
    questions: int | None = None
    """Evaluation questions per group (a seeded sample), or null for all of them."""
    seed: int = 0
    """Seed of that sample."""
    max_new_tokens: int = 32
    """Longest reply, in tokens (a date and two citations take about 25)."""
    train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(
        steps=400, batch_size=16, lr=1e-3, min_lr=1e-4, eval_interval=0, log_interval=50))
    """SFT settings of both arms; train.seed also picks the unknown people taught to abstain (as SFT does)."""
    plain_model: str | None = None
    """A checkpoint already fine-tuned for the plain arm (its training is skipped); null: train it."""
    retrieval_model: str | None = None
    """A checkpoint already fine-tuned for the retrieval arm (its training is skipped); null: train it."""
    runs: str | None = None
    """Directory to keep the fine-tuned runs in (runs/plain, runs/retrieval); null: a temporary one, removed."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    out: str | None = None
    """Directory for the training data, every graded answer and retrieval.json (null: write nothing)."""
    force: bool = False
    """Write into an `out` that holds other files (they are left alone)."""

    def __post_init__(self) -> None:
        for name, lo in (("k", 1), ("max_new_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise LmlabError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.questions is not None and (isinstance(self.questions, bool) or not isinstance(self.questions, int)
                                           or self.questions < 1):
            raise LmlabError(f"questions must be an integer >= 1 or null (all), got {self.questions!r}")
        if isinstance(self.read_share, bool) or not isinstance(self.read_share, (int, float)) \
                or not 0 <= self.read_share < 1:
            raise LmlabError(f"read_share must be a number in [0, 1) (some QA-test people must stay held out), "
                             f"got {self.read_share!r}")


def read_people(world: dict[str, Any], cfg: RetrievalConfig) -> set[str]:
    """The QA-test people fine-tuned on (`read_share` of them, seeded), so not graded."""
    return heldout_people(world, cfg.read_share, cfg.train.seed + 2)


def eval_items(world: dict[str, Any], cfg: RetrievalConfig) -> dict[str, list[dict[str, Any]]]:
    """The graded questions: QA-test people's and the held-out unknown people's (a seeded sample of each)."""
    _taught, heldout = unknown_split(world, cfg.train.seed)
    read = read_people(world, cfg)
    pool = {"qa_test": [q for q in world["qa_test"] if q["person"] not in read],
            "unknown": [q for q in world["qa_unknown"] if q["person"] in heldout]}
    rng = random.Random(cfg.seed)
    groups = {}
    for g in GROUPS:
        items = list(pool[g])
        rng.shuffle(items)
        groups[g] = items[: cfg.questions] if cfg.questions else items
    if not any(groups.values()):
        raise LmlabError(f"the world in {cfg.world} has no questions to grade (no QA-test people and no held-out "
                         "unknown people); generate one with qa_test_fraction > 0 or unknown >= 2")
    return groups


def train_items(world: dict[str, Any], cfg: RetrievalConfig) -> list[dict[str, Any]]:
    """The fine-tuning questions, in `sft_conversations`' order: QA-train, the taught unknown people; then the
    QA-test people read on (none by default)."""
    taught, _ = unknown_split(world, cfg.train.seed)
    read = read_people(world, cfg)
    items = world["qa_train"] + [q for q in world["qa_unknown"] if q["person"] in taught] + \
        [q for q in world["qa_test"] if q["person"] in read]
    if not items:
        raise LmlabError("the world has no questions to fine-tune on (no QA-train people, no unknown people)")
    return items


def plain_records(world: dict[str, Any], cfg: RetrievalConfig) -> list[dict[str, str]]:
    """The quickstart's SFT data (`sft_conversations`), and the QA-test people read on with their answers."""
    read = read_people(world, cfg)
    return [{"prompt": u["content"], "response": a["content"]} for u, a in sft_conversations(world, cfg.train.seed)] \
        + [{"prompt": q["question"], "response": q["answer"]} for q in world["qa_test"] if q["person"] in read]


def check_fits(tok: Tokenizer, context: int, records: list[dict[str, str]], prompts: list[str],
               cfg: RetrievalConfig) -> dict[str, int]:
    """Longest training conversation and evaluation prompt in tokens; an error, before any training, if one
    does not fit the context (a prompt must leave max_new_tokens for its reply)."""
    conv = max(len(encode(tok, _messages(r))[0]) - 1 for r in records)
    prompt = max(len(prompt_ids(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": ""}]))
                 for p in prompts) if prompts else 0
    if conv > context or prompt + cfg.max_new_tokens > context:
        raise LmlabError(f"with k = {cfg.k} passages the longest training conversation is {conv + 1} tokens and the "
                         f"longest question prompt {prompt} (+ max_new_tokens {cfg.max_new_tokens}), more than the "
                         f"model's context of {context}; lower k or max_new_tokens (nothing is truncated)")
    return {"train_conversation_max": conv + 1, "eval_prompt_max": prompt}


def _messages(r: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]


def fine_tune(cfg: RetrievalConfig, arm: str, records: list[dict[str, str]], runs: Path) -> dict[str, Any]:
    """`lmlab sft` from cfg.model on the arm's {"prompt", "response"} records; its summary."""
    data = runs / f"train_{arm}.jsonl"
    write_jsonl(data, records)
    print(f"hallucination retrieval: fine-tuning the {arm} arm ({len(records)} conversations, "
          f"{cfg.train.steps} steps)", file=sys.stderr)
    t0 = time.process_time()
    summary = sft(SFTConfig(init=cfg.model, data=str(data), out=str(runs / arm), eval_questions=0,
                            train=replace(cfg.train, device=cfg.device)))
    return {**summary, "cpu_s": round(time.process_time() - t0, 2)}


def require_chat(path: str) -> tuple[Any, Tokenizer]:
    """A checkpoint trained in the chat template and its tokenizer; an error for one that was not."""
    ck = load_checkpoint(require_checkpoint(path))
    tok = Tokenizer.load(ck.tokenizer_path) if ck.tokenizer_path else None
    _refuse_no_chat(path, "it has no tokenizer.json" if tok is None else chat_template_gap(tok, ck.meta))
    return ck, tok


def _refuse_no_chat(path: str, gap: str | None) -> None:
    if gap:
        raise LmlabError(f"checkpoint {path} has no chat template ({gap}); pass a checkpoint fine-tuned by "
                         "`lmlab sft`, or leave it null to train one")


def chat_engine(path: str, device: str) -> Engine:
    """The engine of a checkpoint trained in the chat template."""
    engine = Engine.from_checkpoint(path, device)
    _refuse_no_chat(path, chat_template_gap(engine.tok, engine.meta))
    return engine


def found(item: dict[str, Any], hits: list[Passage]) -> str:
    return "fact" if stating(item, hits) else "person" if about_person(hits, item["person"]) else "nothing"


def grade(world: dict[str, Any], arm: str, groups: dict[str, list[dict[str, Any]]],
          hits: dict[str, list[list[Passage]]], replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per question: the reply, its label (any answer about an unknown person is made up), what
    retrieval found, and the ids it cites."""
    rows = []
    flat = [(g, it, h) for g in groups for it, h in zip(groups[g], hits[g])]
    for (g, it, h), rep in zip(flat, replies):
        said, numbers = split_citations(rep["text"])
        cited = cited_ids(numbers, h)
        label = classify(said, it["answer"], it["attribute"], world["pools"].get(it["attribute"], ()))
        if g == "unknown" and label == "correct":
            label = "wrong"
        rows.append({"arm": arm, "group": g, "person": it["person"], "attribute": it["attribute"],
                     "question": it["question"], "truth": it["answer"], "reply": rep["text"], "answer": said,
                     "cited": cited, "label": label, "found": found(it, h), "passages": [p.id for p in h]})
    return rows


def citation_scores(world: dict[str, Any], rows: list[dict[str, Any]], shown: dict[str, Passage]) -> dict[str, Any]:
    """ALCE recall and precision over the answers that are not abstentions (one statement each); a cited id
    is resolved among the passages that question was shown. Also the share of citations that name a passage
    shown at all (a number past the last passage is a made-up source)."""
    responses = []
    for r in rows:
        if r["label"] == "abstain":
            continue
        ids = set(r["passages"])
        cited = [shown[c] if c in ids else None for c in r["cited"]]
        responses.append([Statement(Claim(r["person"], r["attribute"], r["answer"]), cited)])
    scores = alce(responses, world_support(world["pools"]))
    made_up = sum(c is None for s in responses for c in s[0].cited)
    return {**scores, "shown_ids": rate(scores["citations"] - made_up, scores["citations"])}


def rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return group_rates(rows, by_attribute=False)


def arm_result(world: dict[str, Any], rows: list[dict[str, Any]], shown: dict[str, Passage]) -> dict[str, Any]:
    """Rates per group and per (group, what retrieval found); citation scores; abstention when nothing was found."""
    nothing = [r for r in rows if r["found"] == "nothing"]
    return {"groups": {g: rates([r for r in rows if r["group"] == g]) for g in GROUPS},
            "by_found": {g: {f: rates([r for r in rows if r["group"] == g and r["found"] == f]) for f in FOUND}
                         for g in GROUPS},
            "abstains_when_nothing_found": rate(sum(r["label"] == "abstain" for r in nothing), len(nothing)),
            "citations": citation_scores(world, rows, shown),
            "cites_when_answering": rate(sum(bool(r["cited"]) for r in rows if r["label"] != "abstain"),
                                         sum(r["label"] != "abstain" for r in rows))}


def retrieval_stats(retriever: Retriever, world: dict[str, Any], groups: dict[str, list[dict[str, Any]]],
                    k: int) -> dict[str, Any]:
    """recall@k on the QA-test questions, and how often the person asked about is among the top k."""
    items = groups["qa_test"]
    ks = sorted({k, *(x for x in RECALL_KS if x <= len(retriever.passages))})
    hits = retriever.search([q["question"] for q in items], max(ks)) if items else []
    curve = recall_at_k(items, hits, ks)
    person = {g: rate(sum(about_person(h[:k], q["person"]) for q, h in zip(its, retriever.search(
        [q["question"] for q in its], k))), len(its)) for g, its in groups.items()}
    return {"k": k, "recall_at_k": curve[k], "recall_curve": {str(x): curve[x] for x in ks},
            "person_at_k": person}


def answer_arm(cfg: RetrievalConfig, world: dict[str, Any], arm: str, path: str,
               groups: dict[str, list[dict[str, Any]]], hits: dict[str, list[list[Passage]]]) -> list[dict[str, Any]]:
    """Greedy chat replies of one arm's checkpoint to the graded questions, graded."""
    engine = chat_engine(path, cfg.device)
    prompts = [grounded_prompt(it["question"], h) if arm == "retrieval" else it["question"]
               for g in groups for it, h in zip(groups[g], hits[g])]
    replies = [a[0] for a in ask(engine, prompts, True, temperature=0, max_new_tokens=cfg.max_new_tokens)]
    return grade(world, arm, groups, hits, replies)


def retrieval_experiment(cfg: RetrievalConfig) -> dict[str, Any]:
    """Fine-tune (or load) both arms, answer the graded questions, score answers, retrieval and citations."""
    t0, c0 = time.perf_counter(), time.process_time()
    world = load_world(cfg.world)
    groups = eval_items(world, cfg)
    given = {"plain": cfg.plain_model, "retrieval": cfg.retrieval_model}
    for path in given.values():
        if path is not None:
            require_chat(path)  # before any training, not after it
    retriever = Retriever(world_passages(world), stem=cfg.stem)
    shown = {p.id: p for p in retriever.passages}
    hits = {g: retriever.search([q["question"] for q in its], cfg.k) for g, its in groups.items()}
    items = train_items(world, cfg)
    records = {"plain": plain_records(world, cfg),
               "retrieval": [grounded_conversation(q, h) for q, h in
                             zip(items, retriever.search([q["question"] for q in items], cfg.k))]}
    ck = load_checkpoint(require_checkpoint(cfg.model))
    if ck.tokenizer_path is None:
        raise LmlabError(f"checkpoint {cfg.model} has no tokenizer.json")
    tok = Tokenizer.load(ck.tokenizer_path)
    prompts = [grounded_prompt(it["question"], h) for g in groups for it, h in zip(groups[g], hits[g])]
    lengths = check_fits(tok, ck.config.max_seq_len, records["retrieval"] + records["plain"], prompts, cfg)
    trained, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="lmlab-retrieval-") as tmp:
        runs = Path(cfg.runs) if cfg.runs else Path(tmp)
        for arm in ARMS:
            if given[arm] is None:
                trained[arm] = fine_tune(cfg, arm, records[arm], runs)
                path = trained[arm]["checkpoint"]
            else:
                path = given[arm]
            rows += answer_arm(cfg, world, arm, path, groups, hits)
    result = {"model": cfg.model, "world": cfg.world, "k": cfg.k, "stem": cfg.stem, "seed": cfg.seed,
              "read_share": cfg.read_share, "read_people": len(read_people(world, cfg)),
              "train_conversations": len(items), "tokens": lengths,
              "retrieval": retrieval_stats(retriever, world, groups, cfg.k),
              "arms": {arm: arm_result(world, [r for r in rows if r["arm"] == arm], shown) for arm in ARMS},
              "training": {arm: {k: s[k] for k in ("steps", "conversations", "val_loss", "wall_s", "cpu_s")}
                           for arm, s in trained.items()},
              "examples": [{k: r[k] for k in ("arm", "group", "found", "question", "truth", "reply", "label")}
                           for arm in ARMS for g in GROUPS for r in [x for x in rows
                                                                     if x["arm"] == arm and x["group"] == g][:2]],
              "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    if cfg.out:
        result["files"] = write_outputs(cfg, records, rows, result)
    return result


def write_outputs(cfg: RetrievalConfig, records: dict[str, list[dict[str, str]]], rows: list[dict[str, Any]],
                  result: dict[str, Any]) -> dict[str, str]:
    """Both arms' training data, every graded answer, and the result, into `cfg.out` (atomically)."""
    out = Path(str(cfg.out))
    files = {"train_plain": str(out / OUT_FILES[0]), "train_retrieval": str(out / OUT_FILES[1]),
             "answers": str(out / OUT_FILES[2]), "result": str(out / OUT_FILES[3])}
    reads = [cfg.model, cfg.world, *(p for p in (cfg.plain_model, cfg.retrieval_model) if p)]
    with output_dir(out, "hallucination retrieval", OUT_FILES, reads=reads, force=cfg.force) as tmp:
        write_jsonl(tmp / OUT_FILES[0], records["plain"])
        write_jsonl(tmp / OUT_FILES[1], records["retrieval"])
        write_jsonl(tmp / OUT_FILES[2], rows)
        write_json(tmp / OUT_FILES[3], {**result, "files": files})
    return files


def format_retrieval(res: dict[str, Any]) -> str:
    """The before/after table (plain vs retrieval arm) per group, by what retrieval found, and citations."""
    r = res["retrieval"]
    lines = [f"hallucination retrieval: {res['model']} fine-tuned on {res['train_conversations']} questions, "
             f"with and without the top {res['k']} BM25 passages"
             + (f" ({res['read_people']} QA-test people among them, not graded)" if res["read_people"] else ""),
             f"retrieval recall@{res['k']} (QA-test): {format_rate(r['recall_at_k'])}; curve "
             + ", ".join(f"@{k} {100 * v['rate']:.1f}%" for k, v in r["recall_curve"].items()),
             "", f"{'arm':<11}{'group':<9}{'n':>5}  {'correct':<22}{'wrong (hallucinated)':<22}{'abstained':<22}"]
    for arm, a in res["arms"].items():
        for g, x in a["groups"].items():
            lines.append(f"{arm:<11}{g:<9}{x['n']:>5}  " + "".join(f"{format_rate(x[k]):<22}" for k in RATES))
    lines += ["", "by what retrieval found (correct / wrong / abstained, %):",
              f"  {'arm':<11}{'group':<9}" + "".join(f"{f:<22}" for f in FOUND)]
    for arm, a in res["arms"].items():
        for g, by in a["by_found"].items():
            cells = [f"n={x['n']}: " + "/".join(f"{100 * x[k]['rate']:.0f}" for k in RATES) if x["n"] else "-"
                     for x in by.values()]
            lines.append(f"  {arm:<11}{g:<9}" + "".join(f"{c:<22}" for c in cells))
    lines.append("")
    for arm, a in res["arms"].items():
        c = a["citations"]
        lines.append(f"{arm}: abstains when retrieval found nothing about the person "
                     f"{format_rate(a['abstains_when_nothing_found'])}; answers that cite "
                     f"{format_rate(a['cites_when_answering'])}")
        lines.append(f"  ALCE citation recall {format_rate(c['recall'])}, precision {format_rate(c['precision'])} "
                     f"({c['statements']} statements, {c['citations']} citations, of ids shown "
                     f"{format_rate(c['shown_ids'])})")
    for arm, t in res["training"].items():
        val = "-" if t["val_loss"] is None else f"{t['val_loss']:.3f}"
        lines.append(f"training {arm}: {t['steps']} steps on {t['conversations']} conversations, val loss {val}, "
                     f"{t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU")
    lines.append(f"total {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU")
    if "files" in res:
        lines.append(f"wrote {', '.join(res['files'].values())}")
    return "\n".join(lines)
