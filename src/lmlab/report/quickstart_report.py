"""report.md for a quickstart run: every stage's numbers, the loss curve, samples.

Everything is read back from `summary.json` and the stage outputs, so the
report can be regenerated from a finished run directory at any time.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from lmlab.evals.binary import format_rate
from lmlab.io import write_text
from lmlab.summary import read_summary


def _fmt(x: float | int | None, spec: str = ",") -> str:
    return "n/a" if x is None else format(x, spec)


def _ci(r: dict) -> str:
    """' [lo, hi]' in percent when the probe stored a 95% interval (runs before it did have none)."""
    ci = r.get("ci95")
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def _mean_chance(world_stats: dict) -> float | None:
    chance = world_stats.get("chance")
    if isinstance(chance, dict) and chance:
        return sum(chance.values()) / len(chance)
    return chance


def write_report(out: Path, samples: list[str]) -> Path:
    s = read_summary(out / "summary.json")
    w, tk, pr, pt, pb = (s.get(k, {}) for k in ("world", "tokenizer", "prepare", "pretrain", "probe"))
    model_cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    lines = [
        "# lmlab quickstart report",
        "",
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{platform.machine()} ({platform.processor() or platform.system()}), device `{pt.get('device')}`.",
        "",
        "## World",
        "",
        f"- people in biographies: {_fmt(w.get('people_qa_train', 0) + w.get('people_qa_test', 0))} "
        f"({_fmt(w.get('people_qa_train'))} QA-train, {_fmt(w.get('people_qa_test'))} QA-test), "
        f"unknown people (in no biography): {_fmt(w.get('people_unknown'))}",
        f"- biographies: {_fmt(w.get('bios'))}; QA pairs in pretraining: {_fmt(w.get('pretrain_qa'))}; "
        f"arithmetic problems in pretraining: {_fmt(w.get('pretrain_arith'))}",
        f"- pretraining documents: {_fmt(w.get('pretrain_docs'))}, characters: {_fmt(w.get('pretrain_chars'))}",
        "",
        "## Tokenizer",
        "",
        f"- {tk.get('kind')} with vocabulary {_fmt(tk.get('vocab_size'))}; "
        f"{_fmt(tk.get('chars_per_token'), '.2f')} characters per token",
        f"- token shards: {_fmt(pr.get('train_tokens'))} train, {_fmt(pr.get('val_tokens'))} val tokens",
        "",
        "## Model",
        "",
        f"- {model_cfg['n_layers']} layers, width {model_cfg['d_model']}, {model_cfg['n_heads']} heads, "
        f"context {model_cfg['max_seq_len']}, {model_cfg['positions']} positions, {model_cfg['norm']}, "
        f"{model_cfg['mlp']} MLP, tied embeddings: {model_cfg['tie_embeddings']}",
        f"- parameters: {_fmt(pt.get('params'))} total, {_fmt(pt.get('params_non_embedding'))} non-embedding",
        "",
        "## Pretraining",
        "",
        "![loss curve](loss.png)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| validation loss | {_fmt(pt.get('val_loss'), '.4f')} |",
        f"| train loss (eval) | {_fmt(pt.get('train_loss'), '.4f')} |",
        f"| steps | {_fmt(pt.get('steps'))} |",
        f"| training tokens | {_fmt(pt.get('train_tokens'))} |",
        f"| tokens/s | {_fmt(pt.get('tokens_per_s'), ',.0f')} |",
        f"| wall time | {_fmt(pt.get('wall_s'), '.1f')} s |",
        f"| precision | {pt.get('precision')} |",
        f"| training compute | {_fmt(pt.get('train_flops'), '.3g')} FLOPs |",
        f"| MFU (vs measured matmul peak {_fmt((pt.get('peak_flops') or 0) / 1e9, ',.0f')} GFLOP/s) "
        f"| {_fmt(pt.get('mfu'), '.1%')} |",
        "",
    ]
    know = pb.get("knowledge", {})
    if know:
        tr, te, un = know.get("train", {}), know.get("test", {}), know.get("unknown", {})
        lines += [
            "## Knowledge probe (greedy, exact match)",
            "",
            "| group | questions | result |",
            "|---|---|---|",
            f"| QA-train people (QA format seen in pretraining) | {tr.get('n')} | "
            f"{_fmt(tr.get('accuracy'), '.1%')}{_ci(tr)} correct |",
            f"| QA-test people (facts only in biographies) | {te.get('n')} | {_fmt(te.get('accuracy'), '.1%')}"
            f"{_ci(te)} correct |",
            f"| unknown people (never seen) | {un.get('n')} | {_fmt(un.get('fabrication_rate'), '.1%')}{_ci(un)} "
            f"fabricated an answer |",
            f"| chance (uniform guess, mean over attributes) | | {_fmt(_mean_chance(w), '.1%')} |",
            "",
        ]
        if know.get("examples"):
            lines += ["| group | question | truth | model |", "|---|---|---|---|"]
            for ex in know["examples"]:
                lines.append(f"| {ex['group']} | {ex['question']} | {ex['truth']} | {ex['model']} |")
            lines.append("")
    sm = s.get("sampling", {})
    if sm:
        ex = sm["explain"]
        names = [k for k in ex["candidates"][0] if k not in ("token_id", "token")]
        lines += [
            "## Sampling",
            "",
            f"The next token after `{sm['prompt']!r}` (true answer: {sm['truth']}), under several settings; "
            f"top-p 0.9 keeps {ex['nucleus_size']} of {ex['vocab_size']} tokens. Entropy (nats): "
            + ", ".join(f"{k} {v:.2f}" for k, v in ex["entropy_nats"].items()) + ".",
            "",
            "![next-token distribution](sampling.png)",
            "",
            "| token | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for c in ex["candidates"]:
            lines.append(f"| `{c['token']!r}` | " + " | ".join(f"{c[n]:.3f}" for n in names) + " |")
        lines.append("")
        for temp, texts in sm["samples"].items():
            lines += [f"Samples at {temp}:", ""]
            for t in texts:
                lines += ["```", t.strip(), "```", ""]
    bi = s.get("bidirectional", {})
    if bi:
        mlm = s.get("masked_lm", {})
        lines += [
            "## Causal vs masked: bidirectional context",
            "",
            f"A masked LM of the same size trained on {_fmt(mlm.get('train_tokens'))} tokens of the same stream "
            f"(the causal model read {_fmt(s.get('pretrain', {}).get('train_tokens'))}) "
            f"(15% of positions masked; val loss {_fmt(mlm.get('val_loss'), '.3f')} on masked tokens, "
            f"{_fmt(mlm.get('wall_s'), '.0f')} s). Held-out biography snippets of {_fmt(bi.get('snippets'))} "
            "(person, attribute) pairs; each value token is predicted with the true earlier tokens given "
            f"({_fmt(bi.get('value_tokens'))} tokens).",
            "",
            "| model | context | token accuracy | value accuracy |",
            "|---|---|---|---|",
        ]
        for key, model, ctx in (("causal", "causal", "left only"), ("masked_left", "masked", "left only"),
                                ("masked_right", "masked", "left and right")):
            lines.append(f"| {model} | {ctx} | {_fmt(bi[key]['token_accuracy'], '.1%')} | "
                         f"{_fmt(bi[key]['value_accuracy'], '.1%')} |")
        lines += ["", "Value accuracy by attribute:", "", "| attribute | causal | masked, left | masked, both |",
                  "|---|---|---|---|"]
        for attr in bi["causal"]["value_accuracy_by_attribute"]:
            lines.append(f"| {attr} | " + " | ".join(
                f"{bi[k]['value_accuracy_by_attribute'][attr]:.1%}" for k in ("causal", "masked_left", "masked_right"))
                + " |")
        lines.append("")
    ft = s.get("sft", {})
    if ft.get("after"):
        b, a = ft["before"], ft["after"]
        lines += [
            "## Supervised fine-tuning (chat format)",
            "",
            f"{ft['steps']} steps on {_fmt(ft['conversations'])} conversations (the QA-train questions, and half the "
            f"unknown people's answered \"I don't know.\"; loss on the assistant's tokens and its end of turn), "
            f"{_fmt(ft['wall_s'], '.0f')} s. Greedy replies to questions in the chat "
            "template, before (the pretrained model) and after:",
            "",
            "| group | stops at end of turn | exact match / fabrication |",
            "|---|---|---|",
        ]
        for g in ("train", "test", "unknown"):
            metric = "exact_match" if "exact_match" in a[g] else "fabrication_rate"
            lines.append(f"| QA-{g} | {b[g]['stop_rate']:.1%} -> {a[g]['stop_rate']:.1%} | "
                         f"{metric.replace('_', ' ')} {b[g][metric]:.1%} -> {a[g][metric]:.1%} |")
        lines += [""]
    rm, dp = s.get("rm", {}), s.get("dpo", {})
    if rm:
        ho = rm.get("heldout", {})
        lines += [
            "## Reward model",
            "",
            f"Bradley-Terry on {_fmt(rm['pairs'])} world preference pairs (true answer over a plausible wrong one; "
            f"\"I don't know.\" over a made-up answer for unknown people), {rm['steps']} steps from the SFT model, "
            f"{_fmt(rm['wall_s'], '.0f')} s. Pairwise accuracy: training pairs {rm['train_accuracy']:.1%}; held out "
            f"{rm['heldout_accuracy']:.1%} (other QA-train questions and unknown people never trained on); QA-test "
            f"people {ho.get('heldout_qa_test', {}).get('accuracy', float('nan')):.1%} (facts seen only in "
            "biographies; 50% is chance).",
            "",
        ]
    if dp.get("after"):
        b, a = dp["before"], dp["after"]
        lines += [
            "## DPO",
            "",
            f"{dp['steps']} steps on the same pairs from the SFT model ({dp['loss']}, beta {dp['beta']}), "
            f"{_fmt(dp['wall_s'], '.0f')} s. Greedy chat replies, SFT model -> DPO model:",
            "",
            "| measure | SFT | DPO |",
            "|---|---|---|",
            f"| gold reward, held-out prompts | {b['gold_reward']['heldout']:+.3f} | "
            f"{a['gold_reward']['heldout']:+.3f} |",
            f"| gold reward, QA-test prompts | {b['gold_reward']['qa_test']:+.3f} | "
            f"{a['gold_reward']['qa_test']:+.3f} |",
            f"| held-out unknown people: fabricated | {b['heldout']['unknown_fabrication']:.1%} | "
            f"{a['heldout']['unknown_fabrication']:.1%} |",
            f"| held-out unknown people: abstained | {b['heldout']['unknown_abstention']:.1%} | "
            f"{a['heldout']['unknown_abstention']:.1%} |",
            f"| held-out QA-train questions: exact match | {b['heldout']['known_exact_match']:.1%} | "
            f"{a['heldout']['known_exact_match']:.1%} |",
            f"| all unknown people (half trained on): fabricated | {b['unknown']['fabrication_rate']:.1%} | "
            f"{a['unknown']['fabrication_rate']:.1%} |",
            f"| QA-train questions DPO trained on: exact match | {b['train']['exact_match']:.1%} | "
            f"{a['train']['exact_match']:.1%} |",
            f"| QA-test exact match | {b['test']['exact_match']:.1%} | {a['test']['exact_match']:.1%} |",
            f"| KL to the SFT model per reply (k3) | 0 | {a['kl']['kl_k3']:.2f} |",
            "",
        ]
    lines += _hallucination_section(s)
    lines += _testtime_section(s)
    pre = s.get("pretrain", {}).get("train_flops")
    post = {k: s[k]["train_flops"] for k in ("sft", "rm", "dpo") if s.get(k, {}).get("train_flops")}
    if pre and post:
        lines += ["## Compute", "", "| stage | training FLOPs | share of pretraining |", "|---|---|---|",
                  f"| pretraining | {pre:.3g} | 100% |"]
        lines += [f"| {k} | {v:.3g} | {v / pre:.2%} |" for k, v in post.items()]
        lines += [f"| post-training, total | {sum(post.values()):.3g} | {sum(post.values()) / pre:.2%} |", "",
                  "The rule of thumb is that post-training costs about 2% of pretraining compute.", ""]
    lines += ["## Greedy samples", ""]
    for smp in samples:
        lines += ["```", smp.strip(), "```", ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _rate(r: dict | None) -> str:
    """A rate with its 95% interval and its counts, as the hallucination stage stores it."""
    return f"{format_rate(r)} ({r['k']}/{r['n']})" if r else "n/a"


def _hallucination_section(s: dict) -> list[str]:
    """Hallucination before and after post-training, counted against the world's known facts."""
    h = s.get("hallucination")
    if not h:
        return []
    return [
        "## Hallucination",
        "",
        f"`lmlab hallucination eval`, {h['questions']} questions per group (seed {h['seed']}): the pretrained "
        "model in the pretraining format, the DPO model in the chat format. Unknown people are the half "
        "post-training never taught to abstain on; 95% Wilson intervals.",
        "",
        "| measure | before post-training | after (DPO) |",
        "|---|---|---|",
        f"| unknown people: hallucinated | {_rate(h['unknown_hallucination_rate_before'])} | "
        f"{_rate(h['unknown_hallucination_rate_after'])} |",
        f"| unknown people: abstained | {_rate(h.get('abstention_rate_before'))} | "
        f"{_rate(h['abstention_rate_after'])} |",
        f"| known people: right | {_rate(h['known_accuracy_before'])} | {_rate(h['known_accuracy_after'])} |",
        f"| expected calibration error | {_fmt(h.get('ece_before'), '.3f')} | {_fmt(h.get('ece_after'), '.3f')} |",
        f"| wrong answers flagged, AUROC: log-probability / self-consistency | | "
        f"{_fmt(h.get('logprob_auroc'), '.2f')} / {_fmt(h.get('selfcheck_auroc'), '.2f')} |",
        "",
        "![reliability after](hallucination/after/reliability.png)",
        "",
    ]


def _testtime_section(s: dict) -> list[str]:
    """Accuracy against N per selection method, with the cost per problem."""
    tt, solver, ver = s.get("testtime", {}), s.get("solver", {}), s.get("verifier", {})
    if not tt.get("rows"):
        return []
    ns = tt["n"]
    lines = [
        "## Test-time compute: best-of-N and majority vote",
        "",
        f"The solver is the pretrained model fine-tuned on {_fmt(solver.get('conversations'))} arithmetic problems "
        f"with worked solutions ({solver.get('steps')} steps, {_fmt(solver.get('wall_s'), '.0f')} s). Its verifier "
        f"is a reward model trained on {_fmt(ver.get('pairs'))} (right, wrong) pairs of the solver's own samples on "
        f"training problems ({ver.get('sample_accuracy', float('nan')):.0%} of those samples right; held-out "
        f"pairwise accuracy {ver.get('heldout_accuracy', float('nan')):.1%}). Then {tt['problems']} held-out problems, "
        f"N samples each at temperature {tt['temperature']:g}; accuracy by how the answer is chosen "
        "(a response without a `The answer is N.` line is wrong):",
        "",
        "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for method in dict.fromkeys(r["method"] for r in tt["rows"]):
        acc = {r["n"]: r["accuracy"] for r in tt["rows"] if r["method"] == method}
        cells = [f"{acc[n]:.1%}" if n in acc else "" for n in ns]
        if method in ("greedy", "sample"):
            cells = [f"{acc[1]:.1%}"] + [""] * (len(ns) - 1)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    top = max(ns)
    cost = {r["method"]: r for r in tt["rows"] if r["n"] == top or r["method"] in ("greedy", "sample")}
    lines += ["", f"Against greedy on the same problems, and the cost per problem (greedy and one sample; the others "
              f"at N={top}):", "",
              "| method | accuracy | vs greedy (paired s.e.) | generated tokens | GFLOPs | wall s |",
              "|---|---|---|---|---|---|"]
    for m, r in cost.items():
        fl = "" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        vs = "" if r.get("vs_greedy") is None else f"{r['vs_greedy']:+.1%} ({r['vs_greedy_stderr']:.1%})"
        lines.append(f"| {m} | {r['accuracy']:.1%} | {vs} | {r['gen_tokens']:.0f} | {fl} | {r['wall_s']:.3f} |")
    lines += ["", "logprob: the sample with the highest mean token log-probability; rm: the verifier's top score; "
              "vote: the most frequent answer (ties to the higher mean log-probability, then the first seen); "
              "oracle: right if any of the N is (the ceiling).", "", "![accuracy against N](testtime/testtime.png)",
              ""]
    return lines
