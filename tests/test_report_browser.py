"""The quickstart's report card (report.html), opened in headless Chromium: every image loads, every stage has a
row with a figure, and nothing is fetched from outside the file. A screenshot is kept as an artifact."""

from __future__ import annotations

import pytest

from lmlab.report.quickstart_html import FIGURES, stage_rows
from lmlab.summary import read_summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_quickstart):
    return tiny_quickstart


def test_the_card_has_a_row_per_stage_with_its_interval(tiny_run):
    rows = stage_rows(read_summary(tiny_run / "summary.json"))
    stages = [r[0] for r in rows]
    for stage in ("pretraining", "knowledge probe", "masked LM", "SFT", "reward model", "DPO", "hallucination",
                  "test-time compute"):
        assert stage in stages
    probe = next(r for r in rows if r[0] == "knowledge probe")
    assert "[" in probe[2] and "(n = 3)" in probe[2]  # a share with its Wilson interval and its count
    assert next(r for r in rows if r[0] == "pretraining")[4] > 0  # training FLOPs


def test_report_html_in_a_browser(browser, tiny_run, artifact_dir):
    page_path = tiny_run / "report.html"
    text = page_path.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    drawn = [name for _, name in FIGURES if (tiny_run / name).is_file()]
    assert {"loss.png", "sampling.png", "testtime/testtime.png", "hallucination/before_after.png"} <= set(drawn)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        assert len(sizes) == len(drawn)
        assert all(done and width > 100 for done, width in sizes), sizes  # every image decoded
        assert page.locator("table tr").count() == 1 + len(stage_rows(read_summary(tiny_run / "summary.json")))
        page.screenshot(path=str(artifact_dir / "report_card.png"), full_page=True)
        assert (artifact_dir / "report_card.png").stat().st_size > 10_000 and not errors
    finally:
        context.close()
