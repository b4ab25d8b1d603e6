"""`lmlab hallucination eval`: the answer classifier on hand-written answers, the Wilson interval, AUROC and
average precision against hand computation, calibration bins, an end-to-end run on the tiny model, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.evals.answers import answer_key, classify, is_abstention
from lmlab.evals.binary import auroc, average_precision, wilson
from lmlab.evals.calibration import expected_calibration_error, reliability_bins
from lmlab.evals.hallucination import GROUPS, HallucinationConfig, format_hallucination, hallucination_eval

CITIES = ["Saltmarsh", "Redwater", "Newhaven", "Stonehaven", "Juniper Falls"]
MAJORS = ["Biology", "Marine Biology", "Art History", "History"]


@pytest.mark.parametrize("answer", ["I don't know.", "I do not know", "I'm not sure.", "i am not sure",
                                    "I have no information about Aeara Astamir.", "Unknown.", "No idea!",
                                    "I don\u2019t know", "", "   ", "I cannot say."])
def test_abstentions(answer):
    assert is_abstention(answer)
    assert classify(answer, "Saltmarsh", "birth_city", CITIES) == "abstain"


@pytest.mark.parametrize("answer", ["Saltmarsh", "saltmarsh.", "He was born in Saltmarsh.", "SALTMARSH!",
                                    "  Saltmarsh  ", "Born in Saltmarsh, I think"])
def test_correct_with_extra_words_case_and_punctuation(answer):
    assert classify(answer, "Saltmarsh", "birth_city", CITIES) == "correct"


@pytest.mark.parametrize("answer, label", [
    ("Redwater", "wrong"),                         # another value
    ("Saltmarsh or Redwater", "wrong"),            # a list of guesses is not an answer
    ("Glimmerholt", "wrong"),                      # a made-up value
    ("I'm not sure, maybe Redwater", "wrong"),     # a hedged claim is still a claim
    ("I'm not sure, maybe Saltmarsh", "correct"),
    ("Saltmarshes", "wrong"),                      # word boundaries
])
def test_wrong_answers(answer, label):
    assert classify(answer, "Saltmarsh", "birth_city", CITIES) == label


def test_the_right_value_for_the_wrong_attribute_is_wrong():
    # the person's birth city, given when asked their employer
    assert classify("Saltmarsh", "Northwind Logistics", "employer", ["Northwind Logistics", "Beacon Health"]) == "wrong"
    assert classify("He works at Northwind Logistics.", "Northwind Logistics", "employer",
                    ["Northwind Logistics", "Beacon Health"]) == "correct"


def test_a_value_inside_a_longer_one_is_not_matched():
    assert classify("Marine Biology", "Biology", "major", MAJORS) == "wrong"
    assert classify("Biology", "Biology", "major", MAJORS) == "correct"
    assert classify("She studied Art History.", "History", "major", MAJORS) == "wrong"
    assert classify("Newhaven", "Stonehaven", "birth_city", CITIES) == "wrong"
    assert classify("juniper falls", "Juniper Falls", "birth_city", CITIES) == "correct"


def test_dates_whole_partial_and_reordered():
    truth = "March 3, 1985"
    assert classify("March 3, 1985", truth, "birth_date") == "correct"
    assert classify("He was born on march 3rd, 1985.", truth, "birth_date") == "correct"
    assert classify("3 March 1985", truth, "birth_date") == "correct"
    assert classify("1985", truth, "birth_date") == "wrong"          # only the year: partial is wrong
    assert classify("March 3", truth, "birth_date") == "wrong"       # no year
    assert classify("March 13, 1985", truth, "birth_date") == "wrong"
    assert classify("March 3, 1986", truth, "birth_date") == "wrong"


def test_answer_key_compares_what_answers_claim():
    assert answer_key("Saltmarsh.", "birth_city", CITIES) == answer_key("Born in saltmarsh", "birth_city", CITIES)
    assert answer_key("Redwater", "birth_city", CITIES) != answer_key("Saltmarsh", "birth_city", CITIES)
    assert answer_key("I'm not sure.", "birth_city", CITIES) == answer_key("No idea", "birth_city", CITIES)
    assert answer_key("3 March 1985", "birth_date") == answer_key("March 3, 1985", "birth_date")


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)  # the textbook value (e.g. statsmodels proportion_confint(5, 10, method="wilson"))
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_auroc_by_hand():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5/4
    assert auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert auroc([1, 2, 3], [1, 0, 0]) == 0.0
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert auroc([1, 2], [1, 1]) is None


def test_average_precision_by_hand():
    # ranked 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): precision at the positives 1 and 2/3 -> (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # a tie is one threshold: 0.5 flags one positive and one negative together -> 1/2 * 1 + 1/2 * 2/3
    assert average_precision([0.9, 0.5, 0.5], [1, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0.2, 0.1], [0, 0]) is None


def test_reliability_bins_and_ece_by_hand():
    bins = reliability_bins([0.95, 0.95, 0.15, 1.0], [1, 0, 0, 1], bins=10)
    assert [b["n"] for b in bins] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    # bin 9: confidence (0.95 + 0.95 + 1) / 3, accuracy 2/3; bin 1: 0.15 vs 0
    expected = 3 / 4 * abs(2 / 3 - 2.9 / 3) + 1 / 4 * 0.15
    assert expected_calibration_error(bins) == pytest.approx(expected)


@pytest.fixture(scope="module")
def result(tiny_model, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("halluc") / "out"
    cfg = HallucinationConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), questions=4,
                              samples=2, max_new_tokens=8, device="cpu", out=str(out))
    return hallucination_eval(cfg), out


def test_end_to_end_structure_rates_and_intervals(result):
    res, out = result
    assert res["format"] == "plain" and res["seed"] == 0 and set(res["groups"]) <= set(GROUPS)
    assert {"qa_train", "qa_test", "unknown"} <= set(res["groups"])
    for g in res["groups"].values():
        rates = [g[k] for k in ("accuracy", "hallucination_rate", "abstention_rate")]
        assert sum(r["k"] for r in rates) == g["n"] and sum(r["rate"] for r in rates) == pytest.approx(1)
        for r in rates + [a[k] for a in g["by_attribute"].values()
                          for k in ("accuracy", "hallucination_rate", "abstention_rate")]:
            assert r["ci95"][0] <= r["rate"] <= r["ci95"][1]
    assert res["groups"]["unknown"]["accuracy"]["k"] == 0  # nothing about an unknown person can be right
    cal = res["calibration"]
    assert len(cal["bins"]) == 10 and sum(b["n"] for b in cal["bins"]) == cal["n"]
    for name in ("logprob", "consistency"):
        d = res["detectors"][name]
        assert d["n"] == cal["n"] and (d["auroc"] is None or 0 <= d["auroc"] <= 1)
    assert res["detectors"]["logprob"]["cost_vs_greedy"] in (1.0, None)
    assert (out / "reliability.png").stat().st_size > 0
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == res["n"] and all(r["label"] in ("correct", "wrong", "abstain") for r in rows)


def test_the_same_seed_gives_the_same_result(result, tiny_model, tiny_data):
    res, _ = result
    again = hallucination_eval(HallucinationConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"),
                                                   questions=4, samples=2, max_new_tokens=8, device="cpu"))
    assert again["groups"] == res["groups"] and again["detectors"] == res["detectors"]


def test_cli_prints_a_table(tiny_model, tiny_data, capsys):
    assert main(["hallucination", "eval", "--model", str(tiny_model), "--world", str(tiny_data.parent / "world"),
                 "--questions", "2", "--samples", "2", "--max_new_tokens", "4", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "hallucinated" in text and "consistency" in text and "ECE" in text


def test_chat_asked_of_a_checkpoint_without_a_chat_template(tiny_model, tiny_data):
    cfg = HallucinationConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), chat=True, device="cpu")
    with pytest.raises(LmlabError, match="no chat template"):
        hallucination_eval(cfg)


def test_a_post_trained_checkpoint_is_asked_in_chat_by_default(tiny_model, tiny_data, tmp_path):
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(tiny_model, ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "stage": "sft"}))
    res = hallucination_eval(HallucinationConfig(model=str(ckpt), world=str(tiny_data.parent / "world"),
                                                 questions=2, samples=2, max_new_tokens=4, device="cpu"))
    assert res["format"] == "chat" and sum(g["n"] for g in res["groups"].values()) == res["n"]


def test_empty_question_set(tiny_model, tiny_data, tmp_path):
    world = tmp_path / "w"
    shutil.copytree(tiny_data.parent / "world", world)
    for name in ("qa_train.jsonl", "qa_test.jsonl", "qa_unknown.jsonl"):
        (world / name).write_text("")
    with pytest.raises(LmlabError, match="no questions"):
        hallucination_eval(HallucinationConfig(model=str(tiny_model), world=str(world), device="cpu"))


@pytest.mark.parametrize("field, value", [("samples", 1), ("questions", 0), ("temperature", 0.0)])
def test_bad_settings(field, value):
    with pytest.raises(LmlabError, match=field):
        HallucinationConfig(**{field: value})


def test_percent_bars_turn_rates_into_error_bars():
    from lmlab.evals.binary import percent_bars, rate

    ys, (lo, hi) = percent_bars([rate(1, 4), rate(0, 0), None])
    low, high = wilson(1, 4)
    assert ys[0] == pytest.approx(25) and lo[0] == pytest.approx(25 - 100 * low)
    assert hi[0] == pytest.approx(100 * high - 25)
    assert ys[1] != ys[1] and ys[2] != ys[2] and lo[1:] == [0.0, 0.0]  # NaN: nothing to draw


def test_without_consistency_only_the_free_detector_runs(tiny_model, tiny_data):
    cfg = HallucinationConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), questions=3, samples=2,
                              max_new_tokens=4, device="cpu", consistency=False)
    res = hallucination_eval(cfg)
    assert set(res["detectors"]) == {"logprob"} and res["detectors"]["logprob"]["extra_tokens"] == 0
    with_both = hallucination_eval(HallucinationConfig(**{**cfg.__dict__, "consistency": True}))
    assert with_both["detectors"]["logprob"] == res["detectors"]["logprob"]  # the greedy pass is the same
    assert "consistency" not in format_hallucination(res).split("detectors of wrong answers")[1]
