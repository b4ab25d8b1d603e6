"""How a post-trained policy compares with where it started, on the world's known truth.

On held-out prompts: greedy chat-format replies graded by the gold reward (+1 true answer or abstention
about an unknown person, 0 abstention about a known one, -1 a wrong or made-up answer), exact match,
fabrication and abstention rates, and the KL divergence from the reference estimated on replies
sampled from the policy (k1 = sum of log pi - log ref; k3 = sum of r - 1 - log r with r = ref / pi,
unbiased and never negative, Schulman 2020).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.data.chat import END_OF_TURN, render
from lmlab.data.conversations import IGNORE, pad_batch
from lmlab.data.world import load_world
from lmlab.data.world_chat import gold_reward, is_world_dir, preference_pairs
from lmlab.evals.chat import chat_answers, chat_qa
from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams
from lmlab.model.logprobs import batch_logprobs


@torch.no_grad()
def kl_to_reference(policy, ref, tok, prompts: list[str], device, seed: int = 0,
                    max_new_tokens: int = 24) -> dict[str, float]:
    """KL(policy || ref) per reply, estimated on one reply sampled (temperature 1) from the policy per prompt."""
    eot = tok.token_to_id(END_OF_TURN)
    engine = Engine(policy, tok, device=device)
    texts = [render([{"role": "user", "content": p}]) for p in prompts]
    outs = engine.generate(texts, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed,
                                                 stop_token_ids=[eot], ignore_eos=True))
    seqs = []
    for text, o in zip(texts, outs):
        c = o.completions[0]
        reply = c.token_ids + ([eot] if c.finish_reason == "stop" else [])
        prompt = tok.encode(text)
        seqs.append((prompt + reply, [IGNORE] * len(prompt) + reply))
    batch = pad_batch(seqs, tok.pad_id if tok.pad_id is not None else 0)
    lp, keep = batch_logprobs(policy, batch, device)
    lr, _ = batch_logprobs(ref, batch, device)
    d = (lr - lp) * keep  # log (ref / pi) per token
    k1 = (-d).sum(1)
    k3 = ((d.exp() - 1 - d) * keep).sum(1)
    return {"kl_k1": k1.mean().item(), "kl_k3": k3.mean().item(), "n": len(prompts)}


def policy_report(policy, ref, tok, data: str, n: int, device, seed: int = 0) -> dict[str, Any] | None:
    """Chat QA and gold reward on held-out world prompts, and KL to the reference (None unless data is a world)."""
    if not is_world_dir(data) or n <= 0:
        return None
    was = policy.training
    world = load_world(data)
    qa = chat_qa(Engine(policy, tok, device=device), world, per_group=n, seed=seed)
    splits = preference_pairs(world, seed)
    known = {q["question"]: q for q in world["qa_train"] + world["qa_test"]}
    gold, held = {}, {}
    for name, pairs in (("heldout", splits["heldout"][:2 * n]), ("qa_test", splits["heldout_qa_test"][:n])):
        replies = chat_answers(Engine(policy, tok, device=device), [p["prompt"] for p in pairs])
        scores = [gold_reward(known.get(p["prompt"], {"answer": None}), a, p["group"] == "unknown")
                  for p, (a, _) in zip(pairs, replies)]
        gold[name] = sum(scores) / max(len(scores), 1)
        if name == "heldout":  # the same split, by kind: people DPO/RL never saw a pair about
            unknown = [s for p, s in zip(pairs, scores) if p["group"] == "unknown"]
            facts = [s for p, s in zip(pairs, scores) if p["group"] != "unknown"]
            nu, nf = max(len(unknown), 1), max(len(facts), 1)
            held = {"unknown_n": len(unknown), "unknown_abstention": sum(s == 1 for s in unknown) / nu,
                    "unknown_fabrication": sum(s == -1 for s in unknown) / nu,
                    "known_n": len(facts), "known_exact_match": sum(s == 1 for s in facts) / nf}
    prompts = [p["prompt"] for p in splits["heldout"][:n]]
    kl = kl_to_reference(policy, ref, tok, prompts, device, seed)
    policy.train(was)
    return {"gold_reward": gold, "heldout": held, "kl": kl,
            **{g: {k: v for k, v in r.items() if k != "examples"} for g, r in qa.items()}}


def report_lines(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The policy reports before -> after as text lines (none without a world to report on)."""
    if not before or not after:
        return []
    lines = [f"  gold reward ({name} prompts): {before['gold_reward'][name]:+.3f} -> {after['gold_reward'][name]:+.3f}"
             for name in ("heldout", "qa_test")]
    bh, ah = before["heldout"], after["heldout"]
    lines.append(f"  held-out unknown people: fabrication {bh['unknown_fabrication']:.1%} -> "
                 f"{ah['unknown_fabrication']:.1%}; held-out QA-train questions: exact match "
                 f"{bh['known_exact_match']:.1%} -> {ah['known_exact_match']:.1%}")
    lines.append(f"  all unknown people: fabrication {before['unknown']['fabrication_rate']:.1%} -> "
                 f"{after['unknown']['fabrication_rate']:.1%}, abstention {before['unknown']['abstention_rate']:.1%} "
                 f"-> {after['unknown']['abstention_rate']:.1%}")
    lines += [f"  QA-{g} exact match {before[g]['exact_match']:.1%} -> {after[g]['exact_match']:.1%}"
              for g in ("train", "test")]
    lines.append(f"  KL to the reference per reply: k1 {after['kl']['kl_k1']:.3f}, k3 {after['kl']['kl_k3']:.3f} "
                 f"(before: {before['kl']['kl_k3']:.3f})")
    return lines
