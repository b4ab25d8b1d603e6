"""`lmlab scale chinchilla`: how to split a compute budget between parameters and tokens.

Pure arithmetic, no torch. A scaling law of the Chinchilla form

    L(N, D) = E + A / N^alpha + B / D^beta

(N parameters, D training tokens) together with the compute estimate C = 6 N D has a closed-form
compute-optimal allocation (Hoffmann et al. 2022, eq. 4): minimising L along the curve D = C / (6N) gives

    N_opt(C) = G (C/6)^(beta / (alpha+beta)),   D_opt(C) = G^-1 (C/6)^(alpha / (alpha+beta)),
    G = (alpha A / (beta B))^(1 / (alpha+beta)).

So the optimal tokens-per-parameter ratio D_opt / N_opt = G^-2 (C/6)^((alpha-beta)/(alpha+beta)) drifts with
compute unless alpha = beta; the popular "20 tokens per parameter" rule is that ratio frozen at one value.
Two published fits are kept here, the paper's own (Approach 3) and Epoch AI's refit of the same data, because
they disagree by about 2x on N_opt at Chinchilla's budget, which is worth seeing before trusting either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lmlab.errors import LmlabError
from lmlab.plan.compute import RULE_TOKENS_PER_PARAM


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta, with N in parameters and D in tokens, loss in nats per token."""

    E: float
    """Irreducible loss: the entropy of text, which no model or data size removes."""
    A: float
    alpha: float
    B: float
    beta: float
    name: str = "law"
    """Short key, e.g. hoffmann."""
    source: str = ""
    """Where the numbers come from, for the report."""

    def __post_init__(self) -> None:
        for key in ("E", "A", "B", "alpha", "beta"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise LmlabError(f"{self.name}: {key} must be a finite number, got {value!r}")
        for key in ("A", "B", "alpha", "beta"):
            if getattr(self, key) <= 0:
                raise LmlabError(f"{self.name}: {key} must be positive for a compute-optimal allocation to exist, "
                                 f"got {getattr(self, key)!r}")

    def loss(self, n: float, d: float) -> float:
        """Predicted loss of a model with `n` parameters trained on `d` tokens."""
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def G(self) -> float:
        """(alpha A / (beta B))^(1/(alpha+beta)): sets the level of N_opt; G^-2 that of the ratio D_opt/N_opt."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def n_exponent(self) -> float:
        """a = beta / (alpha+beta): N_opt grows as C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def d_exponent(self) -> float:
        """b = alpha / (alpha+beta): D_opt grows as C^b (a + b = 1, as C = 6 N D requires)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def ratio_exponent(self) -> float:
        """b - a = (alpha-beta)/(alpha+beta): the tokens-per-parameter ratio grows as C to this power."""
        return (self.alpha - self.beta) / (self.alpha + self.beta)

    def n_opt(self, c: float) -> float:
        """Compute-optimal parameters for a budget of `c` FLOPs."""
        return self.G * (c / 6) ** self.n_exponent

    def d_opt(self, c: float) -> float:
        """Compute-optimal tokens for a budget of `c` FLOPs (N_opt x D_opt = c / 6)."""
        return (c / 6) ** self.d_exponent / self.G

    def tokens_per_param(self, c: float) -> float:
        """D_opt / N_opt at budget `c`: G^-2 (c/6)^((alpha-beta)/(alpha+beta))."""
        return (c / 6) ** self.ratio_exponent / self.G**2

    def flops_for_params(self, n: float) -> float:
        """The budget whose compute-optimal model has `n` parameters: N_opt^-1(n) = 6 (n/G)^(1/a)."""
        return 6 * (n / self.G) ** (1 / self.n_exponent)

    def flops_for_tokens(self, d: float) -> float:
        """The budget whose compute-optimal run sees `d` tokens: D_opt^-1(d) = 6 (d G)^(1/b)."""
        return 6 * (d * self.G) ** (1 / self.d_exponent)

    def d_opt_for_params(self, n: float) -> float:
        """Tokens to train an `n`-parameter model on so that it is compute-optimal: G^-1 (n/G)^(alpha/beta)."""
        return self.flops_for_params(n) / (6 * n)

    def n_opt_for_tokens(self, d: float) -> float:
        """Parameters of the compute-optimal model for `d` training tokens: G (d G)^(beta/alpha)."""
        return self.flops_for_tokens(d) / (6 * d)


HOFFMANN = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="hoffmann",
               source="Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', Approach 3")
"""The Chinchilla paper's parametric fit as published. Taken at face value it asks for about 90 tokens per
parameter at Chinchilla's own budget (5.76e23 FLOPs), far from the ~20 of the paper's Approaches 1 and 2."""
EPOCH = Law(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch",
            source="Besiroglu et al. 2024 (Epoch AI), 'Chinchilla Scaling: A replication attempt'")
"""Epoch AI's refit of Approach 3 on data recovered from the paper's figure; consistent with Approaches 1 and 2
(about 20 tokens per parameter), unlike the published Approach 3 values."""
LAWS = {law.name: law for law in (HOFFMANN, EPOCH)}
"""The published laws, by key."""


def rule_allocation(c: float, tokens_per_param: float = RULE_TOKENS_PER_PARAM) -> tuple[float, float]:
    """(N, D) under a fixed ratio r = D/N and C = 6 N D: N = sqrt(C / (6 r)), D = r N."""
    n = math.sqrt(c / (6 * tokens_per_param))
    return n, tokens_per_param * n


# ---- the verb ----------------------------------------------------------------------------------------

@dataclass
class ChinchillaConfig:
    flops: float | None = None
    """Training compute budget in FLOPs (C = 6 N D), e.g. 5.76e23; give exactly one of flops, params, tokens."""
    params: float | None = None
    """Model size in parameters: each row gives the tokens that make this size compute-optimal."""
    tokens: float | None = None
    """Training tokens available: each row gives the model size that is compute-optimal for them."""
    tokens_per_param: float = RULE_TOKENS_PER_PARAM
    """The fixed ratio D/N of the rule-of-thumb row (Chinchilla's ~20)."""

    def __post_init__(self) -> None:
        given = [k for k in ("flops", "params", "tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none was" if not given else f"{' and '.join(given)} were"
            raise LmlabError(f"give exactly one of --flops (a compute budget), --params (a model size) or --tokens "
                             f"(a token count); {what} given")
        for key in (*given, "tokens_per_param"):
            _positive(key, getattr(self, key))

    @property
    def given(self) -> str:
        """Which of flops, params, tokens was set."""
        return next(k for k in ("flops", "params", "tokens") if getattr(self, k) is not None)


def _positive(key: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise LmlabError(f"{key} must be a positive finite number, got {value!r}")


def _row(name: str, label: str, source: str, n: float, d: float) -> dict[str, Any]:
    c = 6 * n * d
    return {"name": name, "label": label, "source": source, "params": n, "tokens": d, "flops": c,
            "tokens_per_param": d / n, "loss": {law.name: law.loss(n, d) for law in LAWS.values()}}


def chinchilla(cfg: ChinchillaConfig) -> dict[str, Any]:
    """One allocation per rule (the fixed ratio, then each published law) for the quantity `cfg` gives.

    Every row carries its predicted loss under *both* fitted laws (`loss`: {law: value}), the rule's row
    included: the rule has no loss of its own, and seeing each allocation scored by the other law shows how
    much the choice of law matters.
    """
    r = float(cfg.tokens_per_param)
    rule_label = f"{r:g} tokens/param"
    rule_source = "rule of thumb from Hoffmann et al. 2022 (Approaches 1 and 2)"
    rows: dict[str, dict[str, Any]] = {}
    if cfg.flops is not None:
        c = float(cfg.flops)
        rows["rule"] = _row("rule", rule_label, rule_source, *rule_allocation(c, r))
        for law in LAWS.values():
            rows[law.name] = _row(law.name, _LABELS[law.name], law.source, law.n_opt(c), law.d_opt(c))
    elif cfg.params is not None:
        n = float(cfg.params)
        rows["rule"] = _row("rule", rule_label, rule_source, n, r * n)
        for law in LAWS.values():
            rows[law.name] = _row(law.name, _LABELS[law.name], law.source, n, law.d_opt_for_params(n))
    else:
        d = float(cfg.tokens)  # type: ignore[arg-type]
        rows["rule"] = _row("rule", rule_label, rule_source, d / r, d)
        for law in LAWS.values():
            rows[law.name] = _row(law.name, _LABELS[law.name], law.source, law.n_opt_for_tokens(d), d)
    return {
        "given": {cfg.given: float(getattr(cfg, cfg.given))},
        "convention": "C = 6 N D; loss in nats/token predicted by each fitted law for every row",
        "rows": rows,
        "laws": {name: {**asdict(law), "G": law.G, "n_exponent": law.n_exponent, "d_exponent": law.d_exponent}
                 for name, law in LAWS.items()},
    }


_LABELS = {"hoffmann": "Hoffmann 2022", "epoch": "Epoch AI 2024"}


def sci(x: float) -> str:
    """3 significant figures in scientific notation without the clutter: 5.76e23."""
    mantissa, _, exponent = f"{x:.2e}".partition("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def human(x: float, unit: str) -> str:
    """3 significant figures with a K/M/B/T prefix: 69.3 B params, 1.39 T tokens (scientific beyond 1000 T)."""
    for div, prefix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{sci(x)} {unit}" if abs(x) >= 1e15 else f"{x / div:.3g} {prefix} {unit}"
    return f"{x:.3g} {unit}"


def format_chinchilla(result: dict[str, Any]) -> str:
    """Side-by-side table: one column per allocation rule, one line per quantity."""
    (key, value), = result["given"].items()
    what = {"flops": f"a budget of {sci(value)} FLOPs", "params": f"a model of {human(value, 'params')}",
            "tokens": f"{human(value, 'tokens')} of training data"}[key]
    rows = list(result["rows"].values())
    lines_ = [
        ("params N", [human(r["params"], "params") for r in rows]),
        ("tokens D", [human(r["tokens"], "tokens") for r in rows]),
        ("compute C = 6ND", [f"{sci(r['flops'])} FLOPs" for r in rows]),
        ("tokens / param", [f"{r['tokens_per_param']:.1f}" for r in rows]),
    ] + [(f"loss, {_LABELS[name]} law", [f"{r['loss'][name]:.3f}" for r in rows]) for name in LAWS]
    width = max(len(k) for k, _ in lines_)
    cols = [max(len(r["label"]), *(len(v[i]) for _, v in lines_)) for i, r in enumerate(rows)]
    out = [f"Compute-optimal allocation for {what}", ""]
    out.append(" " * width + "".join("   " + r["label"].rjust(w) for r, w in zip(rows, cols)))
    out += [k.ljust(width) + "".join("   " + v.rjust(w) for v, w in zip(vals, cols)) for k, vals in lines_]
    out += ["", "Losses are in nats/token as each fitted law predicts them, for every column (the rule has no law "
            "of its own).", "Sources:"]
    out += [f"  {r['label']}: {r['source']}" for r in rows]
    return "\n".join(out) + "\n"
