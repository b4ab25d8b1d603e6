"""`lmlab serve` over a real socket with the official `openai` client: the API, streaming, seeds under
concurrency, continuous batching, cancellation, errors, the API key and /metrics."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from lmlab.infer.engine import Engine  # noqa: E402
from lmlab.infer.sampling import SamplingParams  # noqa: E402
from lmlab.serve.app import build_app, serve_in_thread  # noqa: E402

KEY = "sk-test-key"


def _start(engine, **kw):
    app = build_app(engine, "tiny", **kw)
    server, url = serve_in_thread(app)
    return app, server, url


def _stop(app, server):
    server.should_exit = True
    app.state.scheduler.close()


@pytest.fixture(scope="module")
def engine(tiny_model) -> Engine:
    return Engine.from_checkpoint(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def served(engine):
    app, server, url = _start(engine)
    yield app, url
    _stop(app, server)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def slow(served, monkeypatch):
    """Slow each decode step down (20 ms) so a test can act while a request is mid-generation."""
    batch = served[0].state.scheduler.batch
    real = batch.forward

    def forward():
        time.sleep(0.02)
        real()

    monkeypatch.setattr(batch, "forward", forward)


PROMPTS = ["Question: Where was", "The answer is"]


def test_completions_match_the_engine_and_report_usage(client, engine):
    r = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=7, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    local = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=7))
    assert [c.text for c in r.choices] == [o.completions[0].text for o in local for _ in range(2)]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    P = sum(len(engine.encode(p)) for p in PROMPTS)
    drawn = sum(len(o.completions[0].token_ids) + (o.completions[0].finish_reason == "stop") for o in local) * 2
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (P, drawn, P + drawn)


def test_completion_logprobs_echo_and_token_prompts(client, engine):
    ids = engine.encode(PROMPTS[0])
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, logprobs=3, echo=True,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(PROMPTS[0])
    assert len(lp.tokens) == len(ids) + 5 and lp.token_logprobs[0] is None
    scored = engine.score([ids[:1]], [ids[1:]])[0]["token_logprobs"]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(scored, abs=1e-4)
    for tops, tok, val in zip(lp.top_logprobs[len(ids):], lp.tokens[len(ids):], lp.token_logprobs[len(ids):]):
        assert tops[tok] == pytest.approx(val) and val == pytest.approx(max(tops.values()))  # greedy: the top
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_with_logprobs_matches_the_engine(client, engine):
    from lmlab.data.chat import END_OF_TURN, render

    msgs = [{"role": "user", "content": "Where was Ior born?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    eot = engine.tok.token_to_id(END_OF_TURN)
    local = engine.generate([render(msgs)], SamplingParams(temperature=0, max_new_tokens=6,
                                                           stop_token_ids=[eot] if eot is not None else []))
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == local[0].completions[0].text.removeprefix(" ")
    assert len(c.logprobs.content) == len(local[0].completions[0].token_ids)
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)


@pytest.mark.parametrize("usage", [False, True])
def test_streaming_completions_and_the_usage_chunk(served, client, usage):
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=9, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    opts = {"stream_options": {"include_usage": True}} if usage else {}
    chunks = list(client.completions.create(stream=True, **kw, **opts))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    if usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None and c.choices for c in chunks)
    # On the wire: server-sent events ending with [DONE].
    body = {**kw, "stream": True, **opts}
    body.update(body.pop("extra_body"))
    raw = httpx.post(served[1] + "/v1/completions", json=body, timeout=30).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_streaming_chat_n_samples(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=1.0, n=3,
              seed=4)
    whole = client.chat.completions.create(**kw)
    parts: dict[int, list[str]] = {}
    roles = set()
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            roles |= {c.delta.role} if c.delta.role else set()
            parts.setdefault(c.index, []).append(c.delta.content or "")
    assert roles == {"assistant"}
    assert ["".join(parts[i]) for i in range(3)] == [c.message.content for c in whole.choices]


def test_a_seeded_request_is_the_same_alone_and_among_eight_others(served, client):
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=20, temperature=1.0, seed=1234, logprobs=0,
              extra_body={"ignore_eos": True})
    alone = client.completions.create(**kw).choices[0].logprobs.tokens
    results: dict[int, list[str]] = {}
    steps_before = served[0].state.scheduler.steps

    def one(i: int) -> None:
        c = openai.OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0, timeout=60)
        if i == 0:
            results[i] = c.completions.create(**kw).choices[0].logprobs.tokens
        else:
            c.completions.create(model="tiny", prompt=PROMPTS[i % 2] * (1 + i % 3), max_tokens=20,
                                 temperature=0.9, seed=i, n=1 + i % 2, extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == alone
    # Continuous batching: the nine requests (180+ tokens) shared decode steps.
    assert served[0].state.scheduler.steps - steps_before < 9 * 20


def test_a_client_that_disconnects_frees_its_rows(served, slow):
    app, url = served
    sched = app.state.scheduler
    body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 60, "n": 3, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                break
        assert sched.live_rows == 3
    deadline = time.time() + 10
    while (sched.live_rows or sched.jobs) and time.time() < deadline:
        time.sleep(0.02)
    assert sched.live_rows == 0 and not sched.jobs  # cancelled long before its 60 tokens (1.2 s at least)


def test_closing_an_openai_stream_frees_its_rows(served, client, slow):
    sched = served[0].state.scheduler
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=2,
                                            max_tokens=60, stream=True, extra_body={"ignore_eos": True})
    for _, _ in zip(range(3), stream):
        pass
    assert sched.live_rows == 2
    stream.close()
    deadline = time.time() + 10
    while (sched.live_rows or sched.jobs) and time.time() < deadline:
        time.sleep(0.02)
    assert sched.live_rows == 0 and not sched.jobs


def test_a_full_queue_answers_429(engine):
    app, server, url = _start(engine, max_waiting=1, max_rows=1)
    real = app.state.scheduler.batch.forward
    app.state.scheduler.batch.forward = lambda: (time.sleep(0.02), real())
    codes: list[int] = []

    def one() -> None:
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 10,
                                                      "ignore_eos": True}, timeout=30)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "rate_limit_error"

    try:
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    finally:
        _stop(app, server)


BAD = [
    ("malformed JSON", b'{"model": "tiny", "prompt": ', 400),
    ("a string temperature", {"model": "tiny", "prompt": "A", "temperature": "0.5"}, 400),
    ("temperature out of range", {"model": "tiny", "prompt": "A", "temperature": 7}, 400),
    ("top_p of 0", {"model": "tiny", "prompt": "A", "top_p": 0}, 400),
    ("n of 0", {"model": "tiny", "prompt": "A", "n": 0}, 400),
    ("logprobs too many", {"model": "tiny", "prompt": "A", "logprobs": 99}, 400),
    ("no prompt", {"model": "tiny"}, 400),
    ("a prompt longer than the context", {"model": "tiny", "prompt": "word " * 400}, 400),
    ("max_tokens beyond the context", {"model": "tiny", "prompt": "A", "max_tokens": 5000}, 400),
    ("a token id outside the vocabulary", {"model": "tiny", "prompt": [10 ** 7]}, 400),
    ("an unknown model", {"model": "gpt-9", "prompt": "A"}, 404),
    ("a body that is a list", [1, 2], 400),
    ("an oversized body", {"model": "tiny", "prompt": "x" * (2 << 20)}, 413),
]


@pytest.mark.parametrize("what,body,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_openai_error_and_the_server_goes_on(served, what, body, status):
    url = served[1]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + "/v1/completions", content=content, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "Traceback" not in r.text
    ok = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_bad_chat_and_routes(served):
    url = served[1]
    for body in ({"model": "tiny", "messages": []}, {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
                 {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
                 {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
                 {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text)
    assert httpx.get(url + "/v1/nothing").status_code == 404
    assert httpx.get(url + "/v1/completions").status_code == 405


def test_an_oversized_chunked_body_is_refused(served):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = httpx.post(served[1] + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_the_api_key(engine):
    app, server, url = _start(engine, api_key=KEY)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.get(url + "/v1/models", headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in good.models.list().data] == ["tiny"]
        assert good.completions.create(model="tiny", prompt="A", max_tokens=2).choices
        assert httpx.get(url + "/health").status_code == 200  # health and metrics stay open to probes
    finally:
        _stop(app, server)


def test_health_and_metrics(served, client):
    url = served[1]
    client.completions.create(model="tiny", prompt="A", max_tokens=3, extra_body={"ignore_eos": True})
    list(client.completions.create(model="tiny", prompt="A", max_tokens=3, stream=True))
    httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "A"})
    assert httpx.get(url + "/health").json()["status"] == "ok"
    text = httpx.get(url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['lmlab_requests_total{route="/v1/completions",status="200"}'] >= 2
    assert samples['lmlab_requests_total{route="/v1/completions",status="404"}'] >= 1
    assert samples["lmlab_completion_tokens_total"] >= 6 and samples["lmlab_prompt_tokens_total"] >= 2
    assert samples["lmlab_time_to_first_token_seconds_count"] >= 2
    assert samples["lmlab_time_per_output_token_seconds_count"] >= 4
    assert "lmlab_requests_running" in samples and "lmlab_requests_waiting" in samples


def test_the_playground_next_token_view(served, engine):
    url = served[1]
    base = httpx.post(url + "/playground/next", json={"prompt": "Question: Where", "show": 5}).json()
    assert [s["name"].split()[0] for s in base["stages"]] == ["model", "temperature", "top-k", "top-p", "min-p"]
    probs = base["stages"][0]["probs"]
    assert probs == sorted(probs, reverse=True) and len(probs) == 5
    k1 = httpx.post(url + "/playground/next", json={"prompt": "Question: Where", "top_k": 1, "show": 5}).json()
    final = k1["stages"][-1]
    assert final["kept"] == 1 and final["probs"][0] == pytest.approx(1.0) and final["entropy"] == pytest.approx(0)
    hot = httpx.post(url + "/playground/next", json={"prompt": "Question: Where", "temperature": 2.0}).json()
    assert hot["stages"][1]["entropy"] > hot["stages"][0]["entropy"]


def test_the_cli_takes_the_checkpoint_first_and_checks_its_settings(monkeypatch, capsys):
    from lmlab.cli import main

    seen = {}
    monkeypatch.setattr("lmlab.serve.run.run_serve", lambda cfg: (seen.update(cfg=cfg), {"model": "m"})[1])
    assert main(["serve", "runs/x/sft/checkpoint", "--port", "9001", "--json"]) == 0
    assert seen["cfg"].checkpoint == "runs/x/sft/checkpoint" and seen["cfg"].port == 9001
    assert seen["cfg"].host == "127.0.0.1"  # loopback unless asked
    monkeypatch.undo()
    assert main(["serve", "runs/x/sft/checkpoint", "--port", "70000"]) == 2
    assert "port must be in [0, 65535]" in capsys.readouterr().err


def test_served_name():
    from lmlab.serve.run import served_name

    assert served_name("runs/quickstart/checkpoint") == "quickstart"
    assert served_name("runs/quickstart/sft/checkpoint") == "sft"
    assert served_name("models/my-model") == "my-model"
