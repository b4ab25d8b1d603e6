"""Test-time compute: the selection rules, the expected-accuracy estimates, both backends, bad input."""

from __future__ import annotations

import csv
import itertools
import json
import random
import socket

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.testtime.select import (
    best_index,
    expected_accuracy,
    majority_vote,
    pass_at,
    pick_best,
    pick_vote,
)
from lmlab.testtime.tasks import Task, load_task, normalise, regex_extractor

# ---------------------------------------------------------------- selection rules


def test_vote_picks_the_most_frequent_answer():
    assert majority_vote(["7", "3", "7", None, "3", "7"]) == 0
    assert majority_vote([None, "3", "7", "3"]) == 1


def test_vote_ties_are_broken_deterministically():
    # Equal counts, no scores: the answer that appeared first wins, whatever the run.
    assert {majority_vote(["b", "a", "a", "b"]) for _ in range(20)} == {0}
    assert majority_vote(["a", "b", "b", "a"]) == 0
    # With a tie-break score, the tied answer whose samples score higher on average wins ...
    assert majority_vote(["b", "a", "a", "b"], [-3.0, -1.0, -1.0, -3.0]) == 1
    # ... and equal scores fall back to the first appearance.
    assert majority_vote(["b", "a", "a", "b"], [-1.0, -1.0, -1.0, -1.0]) == 0
    # NaN scores (a backend without log-probs) never win a tie-break.
    assert majority_vote(["b", "a"], [float("nan"), -5.0]) == 1


def test_unparseable_answers_count_as_wrong_not_as_a_crash():
    assert majority_vote([None, None, None]) is None
    correct = [False, False, False, False]
    assert expected_accuracy(correct, pick_vote([None] * 4), 2, 16, 0) == 0.0
    task = Task("t", ["q"], ["42"], regex_extractor(r"answer is (\d+)"), str, [])
    assert task.answer_of("no number here") is None and not task.correct(0, task.answer_of("nothing"))
    assert task.correct(0, task.answer_of("so the answer is 42."))

    def broken(text):
        raise ValueError("extractor bug")

    assert Task("t", ["q"], ["1"], broken, str, []).answer_of("anything") is None


def test_best_index_ties_and_nans_go_to_the_earliest_sample():
    assert best_index([1.0, 3.0, 3.0]) == 1
    assert best_index([float("nan"), 2.0, float("nan")]) == 1
    assert best_index([float("nan")] * 3) == 0


def test_pass_at_matches_brute_force_enumeration():
    for m in (4, 7):
        for c in range(m + 1):
            correct = [True] * c + [False] * (m - c)
            for k in range(1, m + 1):
                subsets = list(itertools.combinations(range(m), k))
                brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at(m, c, k) == pytest.approx(brute)


def test_best_of_n_with_the_gold_scorer_never_gets_worse_as_n_grows():
    """Over many seeds (random per-problem accuracies and samples), best-of-N under the gold scorer is
    non-decreasing in N in expectation, and equals the exact pass@N."""
    ns, m = [1, 2, 4, 8, 16], 16
    by_n = {n: [] for n in ns}
    for seed in range(300):
        rng = random.Random(seed)
        p = rng.random()
        correct = [rng.random() < p for _ in range(m)]
        gold = [float(c) for c in correct]
        for n in ns:
            est = expected_accuracy(correct, pick_best(gold), n, 64, seed)
            by_n[n].append(est)
            if n in (1, m):  # exhaustive subsets: exact
                assert est == pytest.approx(pass_at(m, sum(correct), n))
    means = [np.mean(by_n[n]) for n in ns]
    assert all(b >= a for a, b in zip(means, means[1:])), means
    assert means[-1] > means[0] + 0.1


def test_vote_beats_a_single_sample_when_the_right_answer_is_the_plurality():
    # 40% of samples right, the wrong ones spread over many answers: voting over 16 is nearly always right.
    rng = random.Random(0)
    wins = []
    for seed in range(50):
        answers = ["42" if rng.random() < 0.4 else str(rng.randint(0, 99)) for _ in range(32)]
        correct = [a == "42" for a in answers]
        single = expected_accuracy(correct, pick_vote(answers), 1, 64, seed)
        vote16 = expected_accuracy(correct, pick_vote(answers), 16, 64, seed)
        wins.append(vote16 - single)
    assert np.mean(wins) > 0.4


def test_normalise_and_regex_extractor():
    assert normalise(" The  Answer. ") == "the answer"
    assert normalise("1,234") == "1234"
    assert regex_extractor(r"is (\d+)")("it is 12 now") == "12"
    assert regex_extractor(r"\d+")("x 7 y") == "7"
    with pytest.raises(LmlabError, match="not a valid regular expression"):
        regex_extractor("(")


# ---------------------------------------------------------------- tasks and bad input


def test_world_tasks_load(tiny_data):
    world = tiny_data.parent / "world"
    arith = load_task("world-arith", str(world), limit=5)
    assert len(arith.questions) == 5
    assert arith.prompts(False)[0].startswith("Problem: ") and arith.prompts(True)[0] == arith.questions[0]
    assert arith.correct(0, arith.answer_of(f"... The answer is {arith.answers[0]}."))
    qa = load_task("world-qa", str(world), limit=3)
    assert qa.prompts(False)[0].endswith("Answer:")


def test_file_task_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "3+3="}\n')
    with pytest.raises(LmlabError, match=r"p\.jsonl:2: missing field 'answer'"):
        load_task(str(f), "unused")
    with pytest.raises(LmlabError, match="neither"):
        load_task(str(tmp_path / "missing.jsonl"), "unused")


def test_bad_config_values():
    from lmlab.testtime.run import TestTimeConfig

    with pytest.raises(LmlabError, match="integer >= 1"):
        TestTimeConfig(n=[4, 0])
    with pytest.raises(LmlabError, match="integer >= 1"):
        TestTimeConfig(n=[-2])
    with pytest.raises(LmlabError, match="unknown method"):
        TestTimeConfig(methods=["vote", "beam"])
    with pytest.raises(LmlabError, match="needs --scorer"):
        TestTimeConfig(methods=["scorer"])


def test_cli_rejects_n_below_one(capsys):
    from lmlab.cli import main

    assert main(["testtime", "--n", "0,4"]) == 2
    assert "every N must be an integer >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- the local engine, end to end


def test_local_run_writes_csv_png_and_summary(tiny_data, tiny_model, tmp_path, capsys):
    from lmlab.testtime.run import TestTimeConfig, run_testtime

    out = tmp_path / "tt"
    res = run_testtime(TestTimeConfig(task="world-qa", world=str(tiny_data.parent / "world"), model=str(tiny_model),
                                      chat=False, problems=6, n=[1, 2, 4], methods=["greedy", "sample", "logprob",
                                                                                   "vote", "oracle"],
                                      max_tokens=24, time_problems=2, device="cpu", out=str(out)))
    rows = list(csv.DictReader(open(out / "testtime.csv")))
    got = {(r["method"], int(r["n"])) for r in rows}
    assert {("greedy", 1), ("sample", 1), ("vote", 4), ("logprob", 2), ("oracle", 4)} <= got
    assert (out / "testtime.png").stat().st_size > 1000
    summary = json.load(open(out / "summary.json"))["testtime"]
    assert summary["problems"] == 6 and summary["n"] == [1, 2, 4]
    # The sampled answers on disk reproduce the reported single-sample accuracy and the pass@N ceiling.
    recs = [json.loads(line) for line in open(out / "samples.jsonl")]
    flat = [s["correct"] for r in recs for s in r["samples"]]
    assert res["sample_accuracy"] == pytest.approx(np.mean(flat))
    for n in (1, 2, 4):
        oracle = float(summary["oracle"][str(n)])
        assert oracle >= float(summary["vote"][str(n)]) - 1e-9 and oracle >= float(summary["logprob"][str(n)]) - 1e-9
    # Cost grows with N: tokens in proportion, FLOPs with it.
    vote = sorted((int(r["n"]), float(r["gen_tokens"]), float(r["flops"])) for r in rows if r["method"] == "vote")
    assert vote[2][1] == pytest.approx(4 * vote[0][1]) and vote[2][2] > vote[0][2]


def test_a_regex_that_never_matches_warns_with_the_share(tiny_data, tiny_model, tmp_path, capsys):
    from lmlab.testtime.run import TestTimeConfig, run_testtime

    res = run_testtime(TestTimeConfig(task="world-qa", world=str(tiny_data.parent / "world"), model=str(tiny_model),
                                      chat=False, problems=3, n=[2], methods=["vote"], answer_regex=r"ZZZ(\d+)",
                                      max_tokens=8, time_problems=0, device="cpu", out=str(tmp_path / "tt")))
    err = capsys.readouterr().err
    assert "found no answer in 6 of 6 samples (100.0%)" in err and "never matched" in err
    assert res["unparsed_share"] == 1.0 and res["vote"]["2"] == 0.0


def test_user_scorer_method(tiny_data, tiny_model, tmp_path, monkeypatch):
    import sys
    import types

    from lmlab.testtime.run import TestTimeConfig, run_testtime

    mod = types.ModuleType("tt_user_scorer")
    mod.shortest = lambda question, response: -len(response)
    monkeypatch.setitem(sys.modules, "tt_user_scorer", mod)
    out = tmp_path / "tt"
    run_testtime(TestTimeConfig(task="world-qa", world=str(tiny_data.parent / "world"), model=str(tiny_model),
                                chat=False, problems=3, n=[1, 3], methods=["scorer"], scorer="tt_user_scorer:shortest",
                                max_tokens=12, time_problems=0, device="cpu", out=str(out)))
    recs = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert all(s["scorer"] == -len(s["text"]) for r in recs for s in r["samples"])


# ---------------------------------------------------------------- the OpenAI backend over real HTTP


@pytest.fixture(scope="module")
def server(tiny_model):
    """`lmlab serve` itself on 127.0.0.1: the OpenAI backend is tested against the real server."""
    pytest.importorskip("fastapi")
    from lmlab.infer.engine import Engine
    from lmlab.serve.app import build_app, serve_in_thread

    engine = Engine.from_checkpoint(tiny_model, device="cpu")
    app = build_app(engine, "tiny")
    srv, url = serve_in_thread(app)
    yield engine, url + "/v1"
    srv.should_exit = True
    app.state.scheduler.close()


def test_openai_backend_against_a_real_server(server):
    pytest.importorskip("openai")
    from lmlab.infer.sampling import SamplingParams
    from lmlab.testtime.generators import OpenAIGenerator, Request

    engine, url = server
    gen = OpenAIGenerator(url, "tiny")
    prompts = ["Problem: A baker has 3 loaves.", "Question: Where was"]
    got = gen.generate(prompts, Request(n=3, temperature=1.0, max_tokens=6, seed=5))
    assert [len(row) for row in got.samples] == [3, 3]
    for row in got.samples:
        for s in row:
            assert s.logprobs is not None and len(s.logprobs) == s.tokens and all(lp <= 0 for lp in s.logprobs)
    # Greedy over HTTP equals greedy on the engine directly.
    greedy = gen.generate(prompts, Request(n=1, temperature=0.0, max_tokens=6))
    local = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    assert [row[0].text for row in greedy.samples] == [o.completions[0].text for o in local]
    chat = OpenAIGenerator(url, "tiny", chat=True).generate(["Hi"], Request(n=2, temperature=1.0, max_tokens=4))
    assert len(chat.samples[0]) == 2 and chat.samples[0][0].logprobs is not None


def test_testtime_run_through_the_openai_backend(server, tiny_data, tmp_path):
    pytest.importorskip("openai")
    from lmlab.testtime.run import TestTimeConfig, run_testtime

    _, url = server
    out = tmp_path / "tt"
    res = run_testtime(TestTimeConfig(task="world-qa", world=str(tiny_data.parent / "world"), endpoint=url,
                                      chat=False, problems=3, n=[1, 2], methods=["greedy", "logprob", "vote"],
                                      max_tokens=10, time_problems=1, out=str(out)))
    assert res["generator"].startswith("openai:") and (out / "testtime.csv").is_file()
    rows = list(csv.DictReader(open(out / "testtime.csv")))
    assert all(r["flops"] == "" for r in rows)  # a remote model's FLOPs are unknown, not invented
    assert all(r["flops"] is None for r in res["rows"])


def test_an_unreachable_endpoint_is_a_clear_error_with_the_url():
    pytest.importorskip("openai")
    from lmlab.testtime.generators import OpenAIGenerator, Request

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LmlabError, match=f"cannot reach the OpenAI-compatible endpoint at {url}"):
        OpenAIGenerator(url, "m", timeout=5, max_retries=0).generate(["hi"], Request(max_tokens=2))


# ---------------------------------------------------------------- the verifier's data


def test_labelled_pairs_take_right_over_wrong_per_problem():
    from lmlab.testtime.verifier import labelled_pairs

    pairs = labelled_pairs(["q1", "q2", "q3"],
                           [["r1", "w1", "w2", "r1"], ["w", "w2"], ["r", "r2"]],
                           [[True, False, False, True], [False, False], [True, True]], per_problem=2)
    assert pairs == [{"prompt": "q1", "chosen": "r1", "rejected": "w1"}]


def test_a_recipe_naming_a_scorer_or_extractor_is_refused_unless_allowed(tmp_path, capsys, monkeypatch):
    from lmlab.cli import main
    from lmlab.config import code_keys
    from lmlab.quickstart import QuickstartConfig

    recipe = tmp_path / "tt.yaml"
    monkeypatch.chdir(tmp_path)  # whatever the verb writes by default stays out of the repository
    recipe.write_text("methods: [scorer]\nscorer: os:getcwd\n")
    assert main(["testtime", "--config", str(recipe)]) == 2
    assert "names code to run (scorer: 'os:getcwd')" in capsys.readouterr().err
    recipe.write_text("extractor: os:getcwd\n")
    assert main(["testtime", "--config", str(recipe)]) == 2
    assert "names code to run (extractor: 'os:getcwd')" in capsys.readouterr().err
    assert main(["testtime", "--config", str(recipe), "--allow-code", "--world", str(tmp_path)]) == 2
    assert "names code" not in capsys.readouterr().err
    assert {"testtime.scorer", "testtime.extractor"} <= set(code_keys(QuickstartConfig))


def test_a_masked_lm_is_refused_like_dpo_and_rl_refuse_it(tiny_data, tmp_path):
    from lmlab.model.checkpoint import model_state, save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer
    from lmlab.testtime.generators import LocalGenerator

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32, vocab_size=300, causal=False)
    path = save_checkpoint(tmp_path / "mlm", model_state(Transformer(cfg)), cfg,
                           tokenizer=tiny_data / "tokenizer.json")
    with pytest.raises(LmlabError, match="masked .*LM; test-time sampling needs a causal model"):
        LocalGenerator(str(path), device="cpu")
