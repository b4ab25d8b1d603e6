"""The browser playground of `lmlab serve`, driven in headless Chromium against the real server and a tiny model.

It checks what a person would see: the next-token bars appear for a prompt and change when a sampling slider
moves (top-k = 1 leaves exactly one token with probability 1), a missing API key is shown as an error and the key
is kept across reloads, Generate streams n samples side by side with coloured tokens, and a screenshot is saved.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
pytest.importorskip("fastapi", reason="lmlab serve needs FastAPI")
pytest.importorskip("uvicorn", reason="lmlab serve needs uvicorn")

pytestmark = pytest.mark.slow

API_KEY = "playground-test-key"
PROMPT = "Question: Where does"
TIMEOUT_MS = 60_000  # generous: the CPU may be shared with other work
@pytest.fixture(scope="module")
def base_url(tiny_model):
    from lmlab.infer.engine import Engine
    from lmlab.serve.app import build_app, serve_in_thread

    app = build_app(Engine.from_checkpoint(tiny_model, device="cpu"), model_name="tiny", api_key=API_KEY)
    server, url = serve_in_thread(app)
    yield url
    server.should_exit = True  # uvicorn's shutdown also closes the scheduler; closing it here too is harmless
    scheduler = getattr(getattr(app, "state", None), "scheduler", None)
    if scheduler is not None:
        scheduler.close()


# ---------------------------------------------------------------- page helpers

MOVE = """(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true}));
                       e.dispatchEvent(new Event('change', {bubbles: true})); }"""
PROBS = "els => els.map(e => parseFloat(e.dataset.prob))"
CHANGED = """before => { const now = [...document.querySelectorAll('#bars .bar')].map(e => parseFloat(e.dataset.prob));
                        return now.length > 0 && JSON.stringify(now) !== JSON.stringify(before); }"""


def set_range(page, selector: str, value) -> None:
    """Move a slider as a person would: set its value and fire `input` and `change`."""
    page.eval_on_selector(selector, MOVE, str(value))


def bar_probs(page) -> list[float]:
    return page.eval_on_selector_all("#bars .bar", PROBS)


def stage_probs(page, stage: int) -> list[float]:
    return page.eval_on_selector_all(f'#bars .bar[data-stage="{stage}"]', PROBS)


def wait_for_bars_other_than(page, before: list[float]) -> list[float]:
    page.wait_for_function(CHANGED, arg=before, timeout=TIMEOUT_MS)
    return bar_probs(page)


def exercise(page, url: str, api_key: str, shot) -> None:
    """The whole browser session; a plain function so it can also be pointed at any server by hand."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/")
    assert page.title() == "lmlab playground"

    # Without the key the server refuses, and the page says so instead of failing silently.
    page.fill("#prompt", PROMPT)
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error").strip()
    assert page.locator("#bars .bar").count() == 0

    # With the key the bars appear; the key is kept in localStorage across a reload.
    page.fill("#api_key", api_key)
    page.reload()
    assert page.input_value("#api_key") == api_key
    page.fill("#prompt", PROMPT)
    page.wait_for_selector("#bars .bar")
    assert not page.is_visible("#error")
    stages = page.eval_on_selector_all("#legend [data-stage]", "els => els.map(e => +e.dataset.kept)")
    assert len(stages) == 5 and stages[0] > 1  # raw, temperature, top-k, top-p, min-p; nothing filtered yet
    n_cands = page.locator("#bars .cand").count()
    assert 1 <= n_cands <= 12
    before = bar_probs(page)
    assert len(before) == 5 * n_cands and all(0.0 <= p <= 1.0 for p in before)
    assert stage_probs(page, 0) == sorted(stage_probs(page, 0), reverse=True)  # candidates: most likely first
    assert page.locator("#bars .tl").first.inner_text().strip()
    # Whitespace is made visible in the candidate labels.
    labels = "".join(page.eval_on_selector_all("#bars .tl span:first-child", "els => els.map(e => e.textContent)"))
    assert " " not in labels and "\n" not in labels

    # A hotter temperature flattens the distribution: the bars change.
    set_range(page, "#temperature", 1.8)
    assert page.inner_text("#temperature_val") == "1.80"
    hot = wait_for_bars_other_than(page, before)
    assert stage_probs(page, 0) == pytest.approx(before[0::5], abs=1e-6)  # raw does not depend on the sliders
    assert max(stage_probs(page, 1)) < max(before[1::5])

    # top-k = 1: the final stage keeps exactly one token, with probability 1.
    set_range(page, "#top_k", 1)
    page.wait_for_function("() => document.querySelector('#legend [data-stage=\"4\"]')?.dataset.kept === '1'")
    wait_for_bars_other_than(page, hot)
    final = stage_probs(page, 4)
    assert sum(1 for p in final if p > 0) == 1 and math.isclose(max(final), 1.0, abs_tol=1e-5)
    assert final.index(max(final)) == 0  # the one kept is the model's most likely token
    assert page.locator("#bars .cand.cut").count() == n_cands - 1

    # Every filter at once: each stage keeps no more than the one before, and the final distribution renormalises
    # over what is kept (a kept token's probability only grows after the temperature stage).
    one = bar_probs(page)
    for sel, value in (("#top_k", 20), ("#temperature", 0.8), ("#top_p", 0.9), ("#min_p", 0.02)):
        set_range(page, sel, value)
    page.wait_for_function("() => document.querySelector('#legend [data-stage=\"2\"]')?.dataset.kept === '20'")
    wait_for_bars_other_than(page, one)
    kept = page.eval_on_selector_all("#legend [data-stage]", "els => els.map(e => +e.dataset.kept)")
    assert kept[0] == kept[1] >= kept[2] == 20 >= kept[3] >= kept[4] >= 1, kept
    for t, f in zip(stage_probs(page, 1), stage_probs(page, 4)):
        assert f == 0 or f >= t - 1e-6

    # Generate: 3 samples streamed side by side, with the filters above.
    page.fill("#n", "3")
    page.fill("#max_tokens", "12")
    page.click("#generate")
    page.wait_for_function("() => ['done', 'error'].includes(document.querySelector('#samples').dataset.state)")
    assert page.get_attribute("#samples", "data-state") == "done", page.inner_text("#error")
    cols = page.locator("#samples .sample")
    assert cols.count() == 3
    for i in range(3):
        col = cols.nth(i)
        texts = col.locator(".tok").all_text_contents()
        assert any(len(t) > 0 for t in texts), f"sample {i} has no tokens"
        assert col.get_attribute("data-finish") in ("stop", "length")
        assert "finish:" in col.locator(".finish").inner_text()
        probs = col.locator(".tok").evaluate_all(PROBS)
        assert all(0.0 < p <= 1.0 for p in probs)

    # Hovering a token shows its top alternatives.
    page.hover("#samples .tok >> nth=0")
    page.wait_for_selector("#tip", state="visible")
    assert "top alternatives" in page.inner_text("#tip")
    page.mouse.move(0, 0)

    page.screenshot(path=str(shot), full_page=True)
    assert not errors, errors


@pytest.mark.slow
def test_playground_in_a_browser(browser, base_url, artifact_dir):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        shot = artifact_dir / "playground.png"
        exercise(context.new_page(), base_url, API_KEY, shot)
        assert shot.is_file() and shot.stat().st_size > 0
    finally:
        context.close()
