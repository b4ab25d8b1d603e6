"""`lmlab ledger` at the tiny size: every claim gives a row with a value, an interval, a verdict and its command;
the markdown and the JSON agree; finished claims come from the cache; `--only` keeps the other rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.ledger.claims import Row
from lmlab.ledger.run import CLAIMS, LedgerConfig, ledger
from lmlab.ledger.write import END, START, update_readme, verdict_table


def _cfg(tmp_path, **kw) -> LedgerConfig:
    kw.setdefault("readme", None)  # never the repository's README
    return LedgerConfig(size="tiny", out=str(tmp_path / "docs"), work=str(tmp_path / "work"), **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")
    result = ledger(_cfg(tmp))
    return tmp, result, json.loads((tmp / "docs" / "ledger.json").read_text())


def test_every_claim_has_a_measured_row(tiny):
    tmp, result, data = tiny
    assert result["ran"] == [c.id for c in CLAIMS] and not result["left_for_next_run"]
    assert [r["id"] for r in data["rows"]] == [c.id for c in CLAIMS]
    for r in data["rows"]:
        assert r["low"] <= r["value"] <= r["high"], r["id"]
        assert r["verdict"] in ("holds", "does not hold", "holds only") and r["unit"] and r["interval"]
        assert r["command"].startswith(f"lmlab ledger --only {r['id']}")
        assert r["source"] and r["test"] and r["measured"]
        assert (tmp / "docs" / r["plot"]).stat().st_size > 1000  # the plot it links was drawn
    assert data["generated_by"] == "lmlab ledger" and data["size"] == "tiny"


def _agree(md: str, data: dict) -> None:
    table = [line for line in md.splitlines() if line.startswith("| [")]
    assert len(table) == len(data["rows"])
    for line, r in zip(table, data["rows"]):
        assert f"(#{r['id']})" in line and r["unit"] in line
        assert (r["verdict"] if r["verdict"] != "holds only" else "holds only") in line
        measured = line.split(" | ")[-2]  # the value column: a condition in the verdict may hold brackets too
        low, high = re.search(r"\[([-\d.e+,]+), ([-\d.e+,]+)\]", measured).groups()
        assert float(low.replace(",", "")) == pytest.approx(r["low"], rel=5e-3, abs=1e-9)
        assert float(high.replace(",", "")) == pytest.approx(r["high"], rel=5e-3, abs=1e-9)
        assert f"`{r['command']}`" in md and f"![{r['id']}]({r['plot']})" in md
        assert r["command"].startswith(f"lmlab ledger --only {r['id']}")


def test_the_markdown_and_the_json_agree(tiny):
    tmp, _, data = tiny
    _agree((tmp / "docs" / "LEDGER.md").read_text(), data)


def test_the_ledger_in_the_repository_is_lmlab_ledger_output():
    """docs/LEDGER.md and docs/ledger.json are written together by `lmlab ledger`, never by hand."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    data = json.loads((docs / "ledger.json").read_text())
    assert data["generated_by"] == "lmlab ledger" and data["size"] == "full"
    _agree((docs / "LEDGER.md").read_text(), data)
    for r in data["rows"]:
        assert (docs / r["plot"]).is_file(), r["plot"]
    readme = (docs.parent / "README.md").read_text()
    assert verdict_table(data["rows"]) in readme  # the README's table is the ledger's


def test_the_readme_table_is_rewritten_between_its_markers(tiny, tmp_path):
    _, _, data = tiny
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\nrest\n")
    assert update_readme(readme, data["rows"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "old table" not in text
    assert verdict_table(data["rows"]) in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, data["rows"]) and plain.read_text() == "no markers\n"


def test_unchanged_claims_come_from_the_cache_and_only_keeps_the_others(tiny, tmp_path):
    tmp, _, first = tiny
    again = ledger(_cfg(tmp))
    assert again["ran"] == [] and again["cached"] == [c.id for c in CLAIMS]
    forced = ledger(_cfg(tmp, only=["top-p-adapts"], force=True))
    assert forced["ran"] == ["top-p-adapts"]
    rows = json.loads((tmp / "docs" / "ledger.json").read_text())["rows"]
    assert [r["id"] for r in rows] == [r["id"] for r in first["rows"]]  # the others kept their rows
    cache = tmp / "work" / "cache" / "temperature-entropy.json"
    stale = json.loads(cache.read_text())
    stale["fingerprint"] = "changed-code"
    cache.write_text(json.dumps(stale))
    assert ledger(_cfg(tmp))["ran"] == ["temperature-entropy"]  # its code "changed": measured again


def test_math_that_must_hold_holds_on_any_model(tiny):
    """Entropy rises with temperature and falls with k for every distribution: a theorem, so every prompt."""
    _, _, data = tiny
    by_id = {r["id"]: r for r in data["rows"]}
    assert by_id["temperature-entropy"]["value"] == 1.0 and by_id["temperature-entropy"]["verdict"] == "holds"
    # An MoE's weights are its total parameters', its FLOPs its active ones' (plus a router): at any size.
    assert by_id["moe-memory-follows-total"]["verdict"] == by_id["moe-compute-follows-active"]["verdict"] == "holds"
    assert by_id["moe-compute-follows-active"]["details"]["moe_over_dense_total_width"] < 0.5
    assert by_id["moe-memory-follows-total"]["details"]["moe_over_dense_active_width"] > 2


def test_bad_settings_and_rows_are_refused(tmp_path):
    with pytest.raises(LmlabError, match="unknown claim"):
        _cfg(tmp_path, only=["no-such-claim"])
    with pytest.raises(LmlabError, match="size"):
        LedgerConfig(size="huge")
    with pytest.raises(ValueError, match="outside its interval"):
        Row(value=2, low=0, high=1, unit="x", verdict="holds", measured="m", interval="i")
    with pytest.raises(ValueError, match="condition"):
        Row(value=0.5, low=0, high=1, unit="x", verdict="holds only", measured="m", interval="i")


def test_each_sampling_claim_on_distributions_whose_answer_is_known(tmp_path):
    """Hand-made logits: entropy falls with k and rises with T for both; top-p = 0.9 keeps 1 token of the sure
    one and all 30 of the flat one, so the nucleus spread is the full 30x."""
    import torch

    from lmlab.ledger import sampling_claims as sc
    from lmlab.ledger.run import Context

    class Fixed:
        def get(self):
            sure = torch.full((30,), -10.0)
            sure[0] = 10.0
            flat = torch.zeros(30)
            skewed = torch.log(torch.tensor([0.5, 0.3, 0.2] + [1e-9] * 27))
            return torch.stack([sure, flat, skewed] * 4), "three hand-made distributions"

        def model_id(self):
            return "fixed"

    (tmp_path / "ledger").mkdir()
    ctx = Context("tiny", 0, str(tmp_path), Fixed())
    assert sc.smaller_k_is_more_predictable(ctx).value == 1.0
    assert sc.temperature_entropy(ctx).verdict == "holds"
    spread = sc.top_p_adapts(ctx)
    assert spread.value == 30.0 and spread.verdict == "holds"
    greedy = sc.temperature_zero_is_greedy(ctx)  # the flat rows have no single argmax: greedy only with a gap
    assert greedy.verdict == "holds only" and greedy.details["prompts_below_0.99"] == 4


def test_a_failing_claim_is_named_and_the_others_are_written(tmp_path, monkeypatch):
    from lmlab.ledger import run as ledger_run
    from lmlab.ledger.claims import Claim

    def broken(ctx):
        raise RuntimeError("the experiment broke")

    good = next(c for c in CLAIMS if c.id == "temperature-entropy")
    bad = Claim("broken-claim", "A claim whose experiment fails.", "a test", "raises", broken)
    monkeypatch.setattr(ledger_run, "CLAIMS", [bad, good])
    with pytest.raises(LmlabError, match="broken-claim: RuntimeError: the experiment broke"):
        ledger(_cfg(tmp_path, only=["broken-claim", "temperature-entropy"]))
    data = json.loads((tmp_path / "docs" / "ledger.json").read_text())
    assert [r["id"] for r in data["rows"]] == ["temperature-entropy"]


def test_full_size_makes_the_quickstart_before_keying_the_cache(tmp_path, monkeypatch):
    """The rows' cache keys name the quickstart's checkpoint: made before them, a second run finds the row cached
    even when the claim itself was the first to need the quickstart."""
    from lmlab.ledger import run as ledger_run
    from lmlab.ledger.claims import Claim

    qs = tmp_path / "qs"

    def fake_quickstart(size, path, work):  # stands in for the minutes-long quickstart: made once, then found
        if not (qs / "checkpoint" / "meta.json").is_file():
            (qs / "checkpoint").mkdir(parents=True)
            (qs / "checkpoint" / "meta.json").write_text('{"step": 7}')
        return qs

    def reads_the_quickstart(ctx):
        ctx.quickstart_run()
        return Row(value=1.0, low=1.0, high=1.0, unit="u", verdict="holds", measured="m", interval="exact",
                   plot=None)

    monkeypatch.setattr(ledger_run, "quickstart_run", fake_quickstart)
    monkeypatch.setattr(ledger_run, "CLAIMS", [Claim("reads-quickstart", "c", "s", "t", reads_the_quickstart)])
    cfg = LedgerConfig(size="full", quickstart=str(qs), readme=None, out=str(tmp_path / "docs"),
                       work=str(tmp_path / "work"))
    assert ledger(cfg)["ran"] == ["reads-quickstart"]
    assert ledger(cfg)["cached"] == ["reads-quickstart"]
