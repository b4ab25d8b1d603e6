"""`lmlab.scale.laws`: the closed-form compute-optimal allocation against hand arithmetic and against a numerical
minimisation of the law itself, the 20-tokens-per-parameter rule, the table, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
from scipy.optimize import minimize_scalar

from lmlab.config import field_docs
from lmlab.errors import LmlabError
from lmlab.scale.laws import (
    EPOCH,
    HOFFMANN,
    ChinchillaConfig,
    Law,
    chinchilla,
    format_chinchilla,
    human,
    rule_allocation,
    sci,
)

GOPHER_FLOPS = 5.76e23
"""Chinchilla's (and Gopher's) training budget: the paper's running example."""


# ---- closed form against hand computation ------------------------------------------------------------

def test_hoffmann_optimum_by_hand():
    # Hoffmann et al. 2022, eq. 4, with E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28.
    alpha_a = 0.34 * 406.4  # 138.176
    beta_b = 0.28 * 410.7  # 114.996
    g = (alpha_a / beta_b) ** (1 / (0.34 + 0.28))  # (1.20157...)^(1/0.62)
    a = 0.28 / 0.62  # N_opt exponent, 0.4516
    b = 0.34 / 0.62  # D_opt exponent, 0.5484
    half = GOPHER_FLOPS / 6  # C/6 = 9.6e22
    n = g * half**a
    d = half**b / g
    assert g == pytest.approx(1.34471, rel=1e-5)
    assert n == pytest.approx(3.219e10, rel=1e-3)  # 32.2 B parameters
    assert d == pytest.approx(2.982e12, rel=1e-3)  # 2.98 T tokens
    assert HOFFMANN.G == pytest.approx(g, rel=1e-12)
    assert HOFFMANN.n_opt(GOPHER_FLOPS) == pytest.approx(n, rel=1e-12)
    assert HOFFMANN.d_opt(GOPHER_FLOPS) == pytest.approx(d, rel=1e-12)
    assert HOFFMANN.tokens_per_param(GOPHER_FLOPS) == pytest.approx(d / n, rel=1e-12)  # about 92.6


def test_epoch_optimum_by_hand():
    # Besiroglu et al. 2024: E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658.
    alpha_a = 0.3478 * 482.01  # 167.643
    beta_b = 0.3658 * 2085.43  # 762.850
    s = 0.3478 + 0.3658  # 0.7136
    g = (alpha_a / beta_b) ** (1 / s)  # (0.219759...)^(1.40135)
    a = 0.3658 / s  # 0.5126
    b = 0.3478 / s  # 0.4874
    half = GOPHER_FLOPS / 6
    n = g * half**a
    d = half**b / g
    assert g == pytest.approx(0.119630, rel=1e-5)
    assert n == pytest.approx(7.225e10, rel=1e-3)  # 72.2 B parameters
    assert d == pytest.approx(1.3287e12, rel=1e-3)  # 1.33 T tokens, about 18.4 tokens/param
    assert EPOCH.n_opt(GOPHER_FLOPS) == pytest.approx(n, rel=1e-12)
    assert EPOCH.d_opt(GOPHER_FLOPS) == pytest.approx(d, rel=1e-12)
    assert EPOCH.tokens_per_param(GOPHER_FLOPS) == pytest.approx(18.39, rel=1e-3)


@pytest.mark.parametrize("law", [HOFFMANN, EPOCH], ids=lambda law: law.name)
@pytest.mark.parametrize("c", [1e18, 1e21, GOPHER_FLOPS, 1e26])
def test_optimum_spends_the_budget(law, c):
    assert 6 * law.n_opt(c) * law.d_opt(c) == pytest.approx(c, rel=1e-12)


@pytest.mark.parametrize("law", [HOFFMANN, EPOCH], ids=lambda law: law.name)
@pytest.mark.parametrize("c", [1e19, GOPHER_FLOPS, 1e26])
def test_optimum_minimises_the_law_along_the_budget(law, c):
    """Minimise L(N, C/(6N)) numerically over log N: the closed form must land on the same N."""
    res = minimize_scalar(lambda u: law.loss(math.exp(u), c / (6 * math.exp(u))),
                          bounds=(math.log(1e3), math.log(1e16)), method="bounded",
                          options={"xatol": 1e-10})
    assert math.exp(res.x) == pytest.approx(law.n_opt(c), rel=1e-4)
    # And no neighbour on a dense grid does better.
    best = law.loss(law.n_opt(c), law.d_opt(c))
    for k in range(-200, 201):
        n = law.n_opt(c) * 10 ** (k / 100)
        assert law.loss(n, c / (6 * n)) >= best - 1e-12


@pytest.mark.parametrize("law", [HOFFMANN, EPOCH], ids=lambda law: law.name)
def test_optimal_tokens_for_params_and_params_for_tokens(law):
    n = 7e9
    d = law.d_opt_for_params(n)
    c = 6 * n * d
    assert law.n_opt(c) == pytest.approx(n, rel=1e-10)  # n is compute-optimal at its budget
    assert law.d_opt(c) == pytest.approx(d, rel=1e-10)
    d = 1.4e12
    n = law.n_opt_for_tokens(d)
    assert law.d_opt(6 * n * d) == pytest.approx(d, rel=1e-10)
    assert law.n_opt(6 * n * d) == pytest.approx(n, rel=1e-10)


@pytest.mark.parametrize("law", [HOFFMANN, EPOCH], ids=lambda law: law.name)
def test_ratio_moves_with_compute_as_predicted(law):
    k = (law.alpha - law.beta) / (law.alpha + law.beta)
    assert law.ratio_exponent == pytest.approx(k)
    assert law.tokens_per_param(1e24) / law.tokens_per_param(1e21) == pytest.approx(1000**k, rel=1e-10)
    assert law.n_exponent + law.d_exponent == pytest.approx(1.0)


def test_loss_formula():
    law = Law(E=1.0, A=100.0, B=1000.0, alpha=0.5, beta=0.5)
    assert law.loss(1e4, 1e6) == pytest.approx(1.0 + 100 / 100 + 1000 / 1000)


# ---- the 20x rule and the verb ---------------------------------------------------------------------

def test_rule_gives_chinchilla_at_gopher_budget():
    n, d = rule_allocation(GOPHER_FLOPS)
    assert n == pytest.approx(6.93e10, rel=1e-3)  # sqrt(5.76e23 / 120) = 69.3 B
    assert d == pytest.approx(1.386e12, rel=1e-3)  # 20 N = 1.39 T
    assert 6 * n * d == pytest.approx(GOPHER_FLOPS)


def test_chinchilla_flops_rows():
    result = chinchilla(ChinchillaConfig(flops=GOPHER_FLOPS))
    rows = result["rows"]
    assert list(rows) == ["rule", "hoffmann", "epoch"]
    assert rows["rule"]["params"] == pytest.approx(6.93e10, rel=1e-3)
    assert rows["rule"]["tokens"] == pytest.approx(1.386e12, rel=1e-3)
    assert rows["rule"]["tokens_per_param"] == pytest.approx(20.0)
    assert rows["hoffmann"]["params"] == pytest.approx(HOFFMANN.n_opt(GOPHER_FLOPS))
    assert rows["epoch"]["tokens"] == pytest.approx(EPOCH.d_opt(GOPHER_FLOPS))
    for row in rows.values():
        assert row["flops"] == pytest.approx(GOPHER_FLOPS)
        assert row["loss"]["hoffmann"] == pytest.approx(HOFFMANN.loss(row["params"], row["tokens"]))
        assert row["loss"]["epoch"] == pytest.approx(EPOCH.loss(row["params"], row["tokens"]))
    # Each law's own allocation is the best for that law at this budget.
    for name in ("hoffmann", "epoch"):
        assert rows[name]["loss"][name] == min(r["loss"][name] for r in rows.values())
    json.dumps(result)


def test_chinchilla_params_and_tokens_rows():
    rows = chinchilla(ChinchillaConfig(params=7e9))["rows"]
    assert all(r["params"] == 7e9 for r in rows.values())
    assert rows["rule"]["tokens"] == pytest.approx(1.4e11)
    assert rows["epoch"]["tokens"] == pytest.approx(EPOCH.d_opt_for_params(7e9))
    rows = chinchilla(ChinchillaConfig(tokens=1.4e12, tokens_per_param=10))["rows"]
    assert all(r["tokens"] == 1.4e12 for r in rows.values())
    assert rows["rule"]["params"] == pytest.approx(1.4e11)
    assert rows["hoffmann"]["params"] == pytest.approx(HOFFMANN.n_opt_for_tokens(1.4e12))


def test_chinchilla_formats_a_table():
    result = chinchilla(ChinchillaConfig(flops=GOPHER_FLOPS))
    out = format_chinchilla(result)
    for text in ("69.3 B params", "1.39 T tokens", "5.76e23 FLOPs", "20 tokens/param", "Hoffmann 2022",
                 "Epoch AI 2024", "tokens / param"):
        assert text in out
    json.dumps(result)


def test_human_units():
    assert human(6.93e10, "params") == "69.3 B params"
    assert human(1.386e12, "tokens") == "1.39 T tokens"
    assert human(512, "params") == "512 params"
    assert human(2e16, "tokens") == "2e16 tokens"
    assert sci(5.76e23) == "5.76e23" and sci(1e21) == "1e21"


# ---- bad input ---------------------------------------------------------------------------------------

def test_needs_exactly_one_quantity():
    with pytest.raises(LmlabError, match="exactly one of --flops.*none was given"):
        ChinchillaConfig()
    with pytest.raises(LmlabError, match="flops and params were given"):
        ChinchillaConfig(flops=1e21, params=1e9)
    with pytest.raises(LmlabError, match="flops and params and tokens were given"):
        ChinchillaConfig(flops=1e21, params=1e9, tokens=1e10)


@pytest.mark.parametrize("key", ["flops", "params", "tokens"])
@pytest.mark.parametrize("value", [-1e21, 0.0, float("nan"), float("inf")])
def test_rejects_non_positive_or_non_finite(key, value):
    with pytest.raises(LmlabError, match=f"{key} must be a positive finite number"):
        ChinchillaConfig(**{key: value})


@pytest.mark.parametrize("value", [0.0, -20.0, float("nan")])
def test_rejects_bad_ratio(value):
    with pytest.raises(LmlabError, match="tokens_per_param must be a positive finite number"):
        ChinchillaConfig(flops=1e21, tokens_per_param=value)


def test_law_rejects_non_positive_exponent():
    with pytest.raises(LmlabError, match="alpha must be positive"):
        Law(E=1.0, A=1.0, B=1.0, alpha=0.0, beta=0.3)


def test_every_field_has_help_text():
    docs = field_docs(ChinchillaConfig)
    assert {f.name for f in dataclasses.fields(ChinchillaConfig)} <= set(docs)


def test_imports_no_torch():
    code = "import sys, lmlab.scale.laws; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
