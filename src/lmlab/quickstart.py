"""`lmlab quickstart`: the whole life of a small model on the built-in world, in minutes.

Stages, each writing into one run directory (default `runs/quickstart/`):
world -> tokenizer -> token shards -> pretraining -> samples and a knowledge
probe -> sampling -> masked LM -> SFT -> reward model -> DPO -> test-time compute
(an arithmetic solver, its verifier, best-of-N and majority vote) -> `report.md` +
`summary.json`. Each stage's own paths are derived from
`out`, so `--set world.people=500` changes the world but not where it goes.
Rerunning resumes pretraining (a finished run is not retrained).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmlab.config import to_dict
from lmlab.data.preferences import pair_ids
from lmlab.data.shards import PrepareConfig, TokenData, prepare
from lmlab.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from lmlab.data.world import WorldConfig, format_qa, generate_world, load_world
from lmlab.errors import LmlabError
from lmlab.evals.bidirectional import compare, snippets
from lmlab.evals.binary import format_rate, rate
from lmlab.evals.hallucination import HallucinationConfig, hallucination_eval
from lmlab.evals.knowledge import probe
from lmlab.infer.engine import Engine
from lmlab.infer.explain import ExplainConfig, explain_logits, plot
from lmlab.infer.sampling import SamplingParams
from lmlab.io import write_jsonl
from lmlab.model.checkpoint import load_model
from lmlab.model.config import ModelConfig
from lmlab.post.dpo import DPOConfig, dpo
from lmlab.post.rm import RMConfig, train_rm
from lmlab.post.sft import SFTConfig, sft
from lmlab.post.stage import PostTrainConfig
from lmlab.report.quickstart_html import write_html
from lmlab.report.quickstart_report import write_report
from lmlab.rundir import QUICKSTART_OUT, locked_run
from lmlab.summary import read_summary, update_summary
from lmlab.testtime.run import TestTimeConfig, format_testtime, run_testtime
from lmlab.testtime.verifier import VerifierConfig, format_verifier, train_verifier
from lmlab.train.trainer import PretrainConfig, TrainConfig, data_fingerprint, pretrain


def _world() -> WorldConfig:
    # 3,000 two-step arithmetic problems (200 held out), half of the + and - steps worked through a round
    # number, so that there are several routes to an answer (what majority vote needs) and a problem with
    # its worked solution fits the 128-token context. A fifth of the training problems go into pretraining,
    # all of them into the arithmetic solver's fine-tuning (the test-time compute stage). 130 unknown people:
    # post-training teaches half of them to abstain, and the other 65 give 390 held-out questions, enough for
    # a +-5-point interval on the hallucination rate about people the model never saw.
    return WorldConfig(people=200, unknown=130, bios_per_person=5, arithmetic=3000, arithmetic_test=200,
                       arith_max_steps=2, arith_split_share=0.5, pretrain_arith_share=0.2)


def _model() -> ModelConfig:
    # Rotary positions: with learned absolute positions the masked model sat on a plateau at the unigram
    # loss for its first ~600 steps (its predictions need attention to neighbours by relative position);
    # with rotary ones it learns from the start, and the causal model knows more for the same tokens.
    return ModelConfig(d_model=128, n_layers=4, n_heads=4, max_seq_len=128, norm="layernorm",
                       positions="rope", mlp="gelu", bias=False, tie_embeddings=True)


def _train() -> TrainConfig:
    # 1300 steps of 16 windows (about 17 passes over the 157k training tokens): under half the tokens of
    # 32 x 1500 at lr 2e-3, with about as much knowledge extracted (docs/benchmarks.md).
    return TrainConfig(steps=1300, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=100, weight_decay=0.1,
                       eval_interval=250, eval_batches=10, ckpt_interval=250, log_interval=10)


@dataclass
class QuickstartConfig:
    out: str = QUICKSTART_OUT
    """Run directory for every stage's output."""
    world: WorldConfig = field(default_factory=_world)
    """The built-in world (its `out` is set to <out>/world)."""
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(kind="bpe", vocab_size=1024))
    """Tokenizer training (input and out are set by the quickstart)."""
    prepare: PrepareConfig = field(default_factory=lambda: PrepareConfig(val_fraction=0.05))
    """Token shards (input, tokenizer and out are set by the quickstart)."""
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(model=_model(), train=_train()))
    """Pretraining (data and out are set by the quickstart)."""
    samples: int = 3
    """Greedy samples to print and put in the report."""
    probe_questions: int = 400
    """Questions per group (QA-train, QA-test, unknown) in the knowledge probe: 400 keeps each share's 95%
    interval within +-5 points (the Wilson half-width at 50% is 4.9 points)."""
    masked_lm: bool = True
    """Also train a masked LM of the same size on the same token stream, and measure what right-hand context
    adds."""
    masked_lm_steps: int | None = 500
    """Training steps of the masked LM (None = as many as pretraining). Fewer than the causal model's: the
    comparison of left-only and two-sided context needs a masked model, not an equally trained one, and
    the masked stage was the quickstart's largest cost."""
    bidirectional_people: int = 60
    """QA-test people whose held-out biography snippets the causal-vs-masked comparison reads."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning into the chat format (init, data and out are set by the quickstart)."""
    rm: RMConfig = field(default_factory=lambda: RMConfig(
        logprob_feature=True, train=PostTrainConfig(steps=120, lr=3e-4, min_lr=3e-5)))
    """The reward model on the world's preference pairs (init, data and out are set by the quickstart); the
    backbone's log-probability of the reply is one of its features. 120 steps: longer runs fit the training
    pairs and lose held-out accuracy (docs/benchmarks.md)."""
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(
        beta=1.0, nll_weight=1.0, train=PostTrainConfig(steps=200, lr=3e-5, min_lr=3e-6)))
    """DPO from the SFT model on the same pairs (init, data and out are set by the quickstart). beta 1, the
    NLL term and a low learning rate: with DPO's usual beta 0.1 this small model drifts far from the
    reference and forgets the answers it was not trained on (see docs/benchmarks.md)."""
    post_training: bool = True
    """Run the post-training stages (SFT, reward model, DPO) after pretraining."""
    hallucination: HallucinationConfig = field(default_factory=lambda: HallucinationConfig(questions=400))
    """Hallucination before post-training (the pretrained model, plain format) and after it (the DPO model,
    chat format), with both detectors (model, world and out are set by the quickstart)."""
    solver: SFTConfig = field(default_factory=lambda: SFTConfig(
        eval_questions=0, train=PostTrainConfig(steps=400, lr=1e-3, min_lr=1e-4)))
    """The arithmetic solver: SFT of the pretrained model on the world's arithmetic problems with worked
    solutions, in the chat format (init, data and out are set by the quickstart)."""
    verifier: VerifierConfig = field(default_factory=lambda: VerifierConfig(
        problems=400, samples=4, train=PostTrainConfig(steps=40, lr=1e-4, min_lr=1e-5)))
    """The solver's outcome verifier, trained on its own graded samples of training problems (model, world
    and out are set by the quickstart)."""
    testtime: TestTimeConfig = field(default_factory=lambda: TestTimeConfig(
        problems=150, n=[1, 2, 4, 8, 16], temperature=0.7))
    """Best-of-N and majority vote on 150 held-out arithmetic problems (model, rm, world and out are set by
    the quickstart); 16 samples per problem, so that N = 8 is averaged over 64 subsets of them."""
    test_time_compute: bool = True
    """Run the test-time compute stages (solver, verifier, accuracy against N)."""


def _stage(name: str) -> float:
    print(f"== {name}", flush=True)
    return time.perf_counter()


@locked_run
def quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t = _stage("world")
    wcfg = replace(cfg.world, out=str(out / "world"))
    wstats = generate_world(wcfg)
    update_summary(out / "summary.json", "world", {**wstats, "wall_s": round(time.perf_counter() - t, 2)})
    print(f"   {wstats.get('people_qa_train', 0) + wstats.get('people_qa_test', 0)} people, "
          f"{wstats.get('pretrain_docs')} pretraining documents, {wstats.get('pretrain_chars'):,} characters")

    t = _stage("tokenizer")
    tcfg = replace(cfg.tokenizer, input=str(out / "world" / "pretrain.jsonl"), out=str(out / "tokenizer.json"))
    tstats = train_tokenizer(tcfg)
    update_summary(out / "summary.json", "tokenizer", {**tstats, "wall_s": round(time.perf_counter() - t, 2)})
    print(f"   {tstats['kind']} vocab {tstats['vocab_size']}, {tstats['chars_per_token']:.2f} chars/token")

    t = _stage("prepare")
    pcfg = replace(cfg.prepare, input=tcfg.input, tokenizer=tcfg.out, out=str(out / "data"))
    meta = prepare(pcfg)
    update_summary(out / "summary.json", "prepare", {
        "train_tokens": meta["splits"]["train"]["n_tokens"], "val_tokens": meta["splits"]["val"]["n_tokens"],
        "wall_s": round(time.perf_counter() - t, 2)})
    print(f"   {meta['splits']['train']['n_tokens']:,} train / {meta['splits']['val']['n_tokens']:,} val tokens")

    t = _stage("pretrain")
    prcfg = replace(cfg.pretrain, data=pcfg.out, tokenizer=tcfg.out, out=str(out))
    if prcfg.resume and _inputs_changed(out / "checkpoint", pcfg.out, prcfg):
        print("   the world, tokenizer or model changed since the last run: training from scratch")
        prcfg = replace(prcfg, resume=False)
    psum = pretrain(prcfg)
    print(f"   val loss {psum['val_loss']:.3f} after {psum['train_tokens']:,} tokens "
          f"({psum['tokens_per_s']:,.0f} tokens/s, {psum['precision']})")

    t = _stage("samples and knowledge probe")
    engine = Engine.from_checkpoint(out / "checkpoint", device=cfg.pretrain.train.device)
    world = load_world(out / "world")
    probe = _probe(engine, world, cfg)
    update_summary(out / "summary.json", "probe", {**{k: v for k, v in probe.items() if k != "samples"},
                                                   "wall_s": round(time.perf_counter() - t, 2)})
    for s in probe["samples"]:
        print(f"   > {s[:200]!r}")
    for key in ("train", "test"):
        print(f"   QA-{key} accuracy {probe['knowledge'][key]['accuracy']:.1%}")
    print(f"   unknown people: fabricated an answer {probe['knowledge']['unknown']['fabrication_rate']:.0%}")

    t = _stage("sampling")
    samp = _sampling(engine, world, out)
    update_summary(out / "summary.json", "sampling", {**samp, "wall_s": round(time.perf_counter() - t, 2)})
    ent = ", ".join(f"{k} {v:.2f}" for k, v in samp["explain"]["entropy_nats"].items())
    print(f"   next-token entropy (nats) {ent}; top-p 0.9 nucleus "
          f"{samp['explain']['nucleus_size']} tokens; chart sampling.png")

    if cfg.masked_lm:
        _masked_lm(cfg, prcfg, pcfg.out, out, engine, world)

    if cfg.post_training:
        t = _stage("supervised fine-tuning (chat format)")
        scfg = replace(cfg.sft, init=str(out / "checkpoint"), data=str(out / "world"), out=str(out / "sft"))
        ssum = sft(scfg)
        update_summary(out / "summary.json", "sft", ssum)
        b, a = ssum["before"], ssum["after"]
        print(f"   {ssum['steps']} steps, {ssum['wall_s']:.0f} s; stops at end of turn {b['test']['stop_rate']:.0%} -> "
              f"{a['test']['stop_rate']:.0%}; chat QA-train {a['train']['exact_match']:.1%}, QA-test "
              f"{a['test']['exact_match']:.1%}")

        t = _stage("reward model")
        rsum = train_rm(replace(cfg.rm, init=scfg.out + "/checkpoint", data=scfg.data, out=str(out / "rm")))
        update_summary(out / "summary.json", "rm", rsum)
        qa_test = rsum["heldout"]["heldout_qa_test"]["accuracy"]
        print(f"   {rsum['steps']} steps, {rsum['wall_s']:.0f} s; pairwise accuracy train "
              f"{rsum['train_accuracy']:.1%}, held out {rsum['heldout_accuracy']:.1%} (QA-test people {qa_test:.1%})")

        t = _stage("DPO")
        dsum = dpo(replace(cfg.dpo, init=scfg.out + "/checkpoint", data=scfg.data, out=str(out / "dpo")))
        update_summary(out / "summary.json", "dpo", dsum)
        b, a = dsum["before"], dsum["after"]
        bg, ag = b["gold_reward"], a["gold_reward"]
        print(f"   {dsum['steps']} steps, {dsum['wall_s']:.0f} s; gold reward on held-out prompts "
              f"{bg['heldout']:+.2f} -> {ag['heldout']:+.2f}, QA-test prompts {bg['qa_test']:+.2f} -> "
              f"{ag['qa_test']:+.2f}; held-out unknown people fabricated {b['heldout']['unknown_fabrication']:.0%} -> "
              f"{a['heldout']['unknown_fabrication']:.0%}; KL {a['kl']['kl_k3']:.2f}")

        t = _stage("hallucination: before and after post-training")
        hal = _hallucination(cfg, out)
        update_summary(out / "summary.json", "hallucination", {**hal, "wall_s": round(time.perf_counter() - t, 2)})
        print(f"   unknown people hallucinated {format_rate(hal['unknown_hallucination_rate_before'])} -> "
              f"{format_rate(hal['unknown_hallucination_rate_after'])}; abstained after "
              f"{format_rate(hal['abstention_rate_after'])}")
        print(f"   known facts right {format_rate(hal['known_accuracy_before'])} -> "
              f"{format_rate(hal['known_accuracy_after'])}; wrong answers flagged, AUROC: log-probability "
              f"{_two(hal['logprob_auroc'])}, self-consistency {_two(hal['selfcheck_auroc'])}")

    if cfg.test_time_compute:
        _test_time(cfg, out)

    report = write_report(out, probe["samples"])
    card = write_html(out)
    total = time.perf_counter() - t_all
    print(f"== done in {total:.0f} s: {report}, {card}")
    summary = read_summary(out / "summary.json")
    return {"out": str(out), "report": str(report), "report_html": str(card), "wall_s": round(total, 1),
            "val_loss": summary["pretrain"]["val_loss"],
            "qa_test_accuracy": summary["probe"]["knowledge"]["test"]["accuracy"]}


def _known(groups: dict[str, Any], key: str) -> dict[str, Any]:
    """A rate over every known person's questions (QA-train and QA-test people both read in pretraining)."""
    k = sum(groups[g][key]["k"] for g in ("qa_train", "qa_test"))
    return rate(k, sum(groups[g][key]["n"] for g in ("qa_train", "qa_test")))


def _hallucination(cfg: QuickstartConfig, out: Path) -> dict[str, Any]:
    """The headline figures of `lmlab hallucination eval` on the pretrained model and on the DPO model; the
    unknown people are the held-out half, never taught to abstain."""
    world = str(out / "world")
    # The detectors are reported for the post-trained model; sampling k answers to each of the pretrained
    # model's questions would double the stage's time for a figure the summary does not show.
    before = hallucination_eval(replace(cfg.hallucination, model=str(out / "checkpoint"), world=world,
                                        consistency=False, out=str(out / "hallucination" / "before")))
    after = hallucination_eval(replace(cfg.hallucination, model=str(out / "dpo" / "checkpoint"), world=world,
                                       out=str(out / "hallucination" / "after")))
    b, a = before["groups"], after["groups"]
    return {"unknown_hallucination_rate_before": b["unknown"]["hallucination_rate"],
            "unknown_hallucination_rate_after": a["unknown"]["hallucination_rate"],
            "known_accuracy_before": _known(b, "accuracy"), "known_accuracy_after": _known(a, "accuracy"),
            "abstention_rate_before": b["unknown"]["abstention_rate"],
            "abstention_rate_after": a["unknown"]["abstention_rate"],
            "logprob_auroc": after["detectors"]["logprob"]["auroc"],
            "selfcheck_auroc": after["detectors"]["consistency"]["auroc"],
            "ece_before": before["calibration"]["ece"], "ece_after": after["calibration"]["ece"],
            "questions": cfg.hallucination.questions, "seed": cfg.hallucination.seed}


def _two(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _test_time(cfg: QuickstartConfig, out: Path) -> None:
    """Fine-tune an arithmetic solver, train its verifier, then measure accuracy against N per method."""
    t = _stage("test-time compute: arithmetic solver (SFT on worked solutions)")
    world = load_world(out / "world")
    convs = out / "arith" / "conversations.jsonl"
    tok = Tokenizer.load(out / "tokenizer.json")
    ctx = cfg.pretrain.model.max_seq_len
    rows = [{"prompt": p["question"], "response": p["solution"]} for p in world["arith_train"]]
    fits = [r for r in rows if len(pair_ids(tok, r, r["response"])) <= ctx]
    if not fits:
        print(f"   skipped: no arithmetic problem with its solution fits the {ctx}-token context")
        return
    write_jsonl(convs, fits)
    solver = sft(replace(cfg.solver, init=str(out / "checkpoint"), data=str(convs), out=str(out / "arith")))
    update_summary(out / "summary.json", "solver", solver)
    print(f"   {solver['steps']} steps on {solver['conversations']:,} problems ({len(rows) - len(fits)} longer "
          f"than the {ctx}-token context left out), {solver['wall_s']:.0f} s")

    t = _stage("test-time compute: verifier (reward model on the solver's own graded samples)")
    methods = list(cfg.testtime.methods)
    try:
        ver = train_verifier(replace(cfg.verifier, model=solver["checkpoint"], world=str(out / "world"),
                                     out=str(out / "verifier")))
        update_summary(out / "summary.json", "verifier", ver)
        print(format_verifier(ver), end="")
    except LmlabError as e:  # a tiny world may give too few (right, wrong) pairs: go on without the verifier
        print(f"   no verifier: {e}")
        ver, methods = {"checkpoint": None}, [m for m in methods if m != "rm"]

    t = _stage("test-time compute: best-of-N and majority vote")
    tt = run_testtime(replace(cfg.testtime, model=solver["checkpoint"], rm=ver["checkpoint"], methods=methods,
                              world=str(out / "world"), out=str(out / "testtime")))
    update_summary(out / "summary.json", "testtime", {**tt, "wall_s": round(time.perf_counter() - t, 2)})
    print(format_testtime(tt), end="")
    votes = ", ".join(f"majority of {n} {a:.1%}" for n, a in tt.get("vote", {}).items() if int(n) in (16, 32))
    if tt.get("greedy_accuracy") is not None and votes:
        print(f"   greedy {tt['greedy_accuracy']:.1%}, one sample {tt['sample_accuracy']:.1%}, {votes}")


def _probe(engine: Engine, world: dict[str, Any], cfg: QuickstartConfig) -> dict[str, Any]:
    """Greedy samples from a few first names, and the knowledge probe."""
    prompts = [p["name"].split()[0] for p in world["people"][: cfg.samples]]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=80))
    samples = [p + o.completions[0].text for p, o in zip(prompts, outs)]
    return {"samples": samples, "knowledge": probe(engine, world, per_group=cfg.probe_questions)}


def _sampling(engine: Engine, world: dict[str, Any], out: Path) -> dict[str, Any]:
    """The sampling chapter on the trained model: one next-token explanation, samples at two temperatures."""
    item = next(q for q in world["qa_test"] if q["attribute"] == "birth_city")
    prompt = format_qa(item["question"])
    cfg = ExplainConfig(prompt=prompt, out=str(out / "sampling.png"))
    result = explain_logits(engine.next_token_logits(prompt), engine.tok.decode, cfg)
    plot(result, prompt, cfg.out)
    name = world["people"][0]["name"]
    samples = {}
    for temp in (0.7, 1.5):
        outs = engine.generate([name], SamplingParams(temperature=temp, n=3, seed=0, max_new_tokens=40))
        samples[f"T={temp:g}"] = [name + c.text for c in outs[0].completions]
    return {"prompt": prompt, "truth": item["answer"], "explain": result, "samples": samples}


def _masked_lm(cfg: QuickstartConfig, prcfg: PretrainConfig, data: str, out: Path, engine: Engine,
               world: dict[str, Any]) -> None:
    """The same model and token budget trained with the masked objective, then the bidirectional probe."""
    t = _stage("masked LM (same size, same token stream)")
    mtrain = prcfg.train if cfg.masked_lm_steps is None else replace(
        prcfg.train, steps=cfg.masked_lm_steps, decay_steps=None,
        warmup_steps=min(prcfg.train.warmup_steps, cfg.masked_lm_steps // 10))
    mcfg = replace(prcfg, out=str(out / "mlm"), objective="mlm", train=mtrain)
    if mcfg.resume and _inputs_changed(out / "mlm" / "checkpoint", data, mcfg):
        mcfg = replace(mcfg, resume=False)
    msum = pretrain(mcfg)
    update_summary(out / "summary.json", "masked_lm", {k: msum[k] for k in (
        "val_loss", "train_tokens", "tokens_per_s", "wall_s", "params")})
    print(f"   masked-token val loss {msum['val_loss']:.3f} ({msum['wall_s']:.0f} s)")
    t = _stage("bidirectional context probe")
    masked = load_model(out / "mlm" / "checkpoint", engine.device)
    res = compare(engine.model, masked, engine.tok, snippets(world, "qa_test", cfg.bidirectional_people))
    for reading in ("causal", "masked_right", "masked_left"):
        res[reading].pop("per_snippet")  # the totals are the summary's; per-snippet results are for intervals
    update_summary(out / "summary.json", "bidirectional", {**res, "wall_s": round(time.perf_counter() - t, 2)})
    for key, label in (("causal", "causal, left context"), ("masked_left", "masked, left context"),
                       ("masked_right", "masked, both sides")):
        print(f"   {label:22s} token accuracy {res[key]['token_accuracy']:.1%}, "
              f"value accuracy {res[key]['value_accuracy']:.1%}")


def _inputs_changed(ckpt: Path, data: str, cfg: PretrainConfig) -> bool:
    """Whether an existing checkpoint was trained on other data, another tokenizer or another model."""
    import json

    if not (ckpt / "meta.json").is_file():
        return False
    try:
        saved = json.loads((ckpt / "meta.json").read_text()).get("data_fingerprint")
        model = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    wanted = {**to_dict(cfg.model), "vocab_size": TokenData.read_meta(data)["vocab_size"],
              "causal": cfg.objective == "causal"}
    return (saved is not None and saved != data_fingerprint(data)) or model != wanted
