"""Sentence passages of the world with their facts, BM25 retrieval and its recall@k, grading of grounded replies,
bad input, and `lmlab hallucination retrieval` end to end on a tiny world and model."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from lmlab.data.world import load_world
from lmlab.data.world_chat import unknown_split
from lmlab.data.world_passages import Passage, world_passages
from lmlab.errors import LmlabError
from lmlab.post.stage import PostTrainConfig


@pytest.fixture(scope="module")
def world(tiny_data):
    return load_world(tiny_data.parent / "world")


@pytest.fixture(scope="module")
def retriever(world):
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    from lmlab.evals.retrieval import Retriever

    return Retriever(world_passages(world), stem=False)


def test_passages_are_the_biographies_sentences_with_their_facts(world):
    passages = world_passages(world)
    assert len(passages) == 6 * len(world["bios"]) and len({p.id for p in passages}) == len(passages)
    for i, bio in enumerate(world["bios"]):
        mine = [p for p in passages if p.id.startswith(f"d{i}.")]
        assert " ".join(p.text for p in mine) == bio["text"]
        assert sorted(p.attribute for p in mine) == sorted(world["attributes"])
        for p in mine:
            fact = world["people_by_name"][p.person]
            assert p.person == bio["person"] and p.value == fact[p.attribute] and p.value in p.text


def test_a_biography_that_is_not_its_templates_is_refused(world):
    bad = {**world, "bios": [{**world["bios"][0], "text": world["bios"][0]["text"] + " Extra words."}]}
    with pytest.raises(LmlabError, match="biography 0"):
        world_passages(bad)


def test_bm25_finds_the_person_and_mostly_the_fact(world, retriever):
    from lmlab.evals.retrieval import about_person, recall_at_k

    known = world["qa_train"] + world["qa_test"]
    hits = retriever.search([q["question"] for q in known], 5)
    # The made-up name is the rarest token: the person asked is nearly always first (not always: a namesake's
    # sentence in the question's own words, "X Y is employed by", can outrank the person's in other words).
    assert sum(h[0].person == q["person"] for q, h in zip(known, hits)) >= 0.95 * len(known)
    curve = recall_at_k(known, hits, [1, 5])
    assert curve[1]["rate"] < curve[5]["rate"] and curve[5]["rate"] >= 0.75  # 0.85 on this world
    unknown = world["qa_unknown"]
    assert not any(about_person(h, q["person"]) for q, h in zip(unknown, retriever.search(
        [q["question"] for q in unknown], 5)))


def test_stemming_matches_other_forms_of_a_word():
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    pytest.importorskip("Stemmer", reason="stemming needs PyStemmer (the 'retrieval' extra)")
    from lmlab.evals.retrieval import Retriever

    passages = [Passage("d0.0", "Aeara Astamir was born in Saltmarsh.", "Aeara Astamir", "birth_city", "Saltmarsh"),
                Passage("d0.1", "Aeara Astamir is employed by Beacon Health.", "Aeara Astamir", "employer",
                        "Beacon Health")]
    assert Retriever(passages, stem=True).search(["Who employs Aeara Astamir?"], 1)[0][0].id == "d0.1"


def test_stemming_without_pystemmer_says_how_to_get_it(monkeypatch):
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    from lmlab.evals.retrieval import Retriever

    monkeypatch.setitem(sys.modules, "Stemmer", None)  # import Stemmer now raises ImportError
    passage = Passage("d0.0", "Aeara Astamir was born in Saltmarsh.", "Aeara Astamir", "birth_city", "Saltmarsh")
    with pytest.raises(LmlabError, match="PyStemmer"):
        Retriever([passage], stem=True)
    assert Retriever([passage], stem=False).search(["Where was Aeara Astamir born?"], 1)[0] == [passage]


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(retriever, k):
    with pytest.raises(LmlabError, match="k"):
        retriever.search(["Where was Aeara Astamir born?"], k)


def test_k_beyond_the_passages(retriever):
    with pytest.raises(LmlabError, match="more than the"):
        retriever.search(["x"], len(retriever.passages) + 1)


def test_grading_labels_citations_and_what_was_found(world, retriever):
    from lmlab.evals.grounded import arm_result, grade

    _, heldout = unknown_split(world, 1337)
    q_known = world["qa_test"][0]
    q_unknown = next(q for q in world["qa_unknown"] if q["person"] in heldout)
    groups = {"qa_test": [q_known], "unknown": [q_unknown]}
    hits = {g: retriever.search([q["question"] for q in its], 30) for g, its in groups.items()}
    shown = hits["qa_test"][0]
    fact = next(i for i, p in enumerate(shown, 1) if p.person == q_known["person"]
                and p.attribute == q_known["attribute"])
    other = next(i for i, p in enumerate(shown, 1) if p.attribute != q_known["attribute"])
    replies = [{"text": f"{q_known['answer']} [{fact}][{other}][99]"},
               {"text": f"{q_unknown['answer']} [1]"}]
    rows = grade(world, "retrieval", groups, hits, replies)
    assert [r["label"] for r in rows] == ["correct", "wrong"]  # the hidden fact of an unknown person is made up
    assert [r["found"] for r in rows] == ["fact", "nothing"]
    assert rows[0]["answer"] == q_known["answer"] and len(rows[0]["cited"]) == 3
    res = arm_result(world, rows, {p.id: p for p in retriever.passages})
    c = res["citations"]
    # the known answer cites a made-up id: unsupported, its 3 citations irrelevant; the unknown one unsupported
    assert (c["recall"]["k"], c["recall"]["n"], c["precision"]["k"], c["precision"]["n"]) == (0, 2, 0, 4)
    assert (c["shown_ids"]["k"], c["shown_ids"]["n"]) == (3, 4)
    assert res["abstains_when_nothing_found"]["k"] == 0 and res["abstains_when_nothing_found"]["n"] == 1
    rows = grade(world, "retrieval", groups, hits, [{"text": f"{q_known['answer']} [{fact}]"},
                                                     {"text": "I don't know."}])
    res = arm_result(world, rows, {p.id: p for p in retriever.passages})
    assert res["citations"]["recall"]["rate"] == 1.0 and res["citations"]["precision"]["rate"] == 1.0
    assert res["abstains_when_nothing_found"]["rate"] == 1.0


def test_fine_tuning_and_graded_people_never_overlap(world):
    from lmlab.evals.grounded import RetrievalConfig, eval_items, plain_records, train_items

    for share in (0.0, 0.5):
        cfg = RetrievalConfig(read_share=share)
        trained = {q["person"] for q in train_items(world, cfg)}
        graded = {q["person"] for its in eval_items(world, cfg).values() for q in its}
        assert graded and not trained & graded
        read = {q["person"] for q in world["qa_test"]} & trained
        assert len(read) == round(share * len({q["person"] for q in world["qa_test"]}))
        # both arms fine-tune on the same questions, in the same order
        assert [r["prompt"] for r in plain_records(world, cfg)] == [q["question"] for q in train_items(world, cfg)]


@pytest.mark.parametrize("field, value", [("k", 0), ("max_new_tokens", 0), ("questions", 0), ("read_share", 1.0)])
def test_bad_settings(field, value):
    from lmlab.evals.grounded import RetrievalConfig

    with pytest.raises(LmlabError, match=field):
        RetrievalConfig(**{field: value})


def test_empty_question_set(tiny_model, tiny_data, tmp_path):
    from lmlab.evals.grounded import RetrievalConfig, retrieval_experiment

    w = tmp_path / "w"
    shutil.copytree(tiny_data.parent / "world", w)
    for name in ("qa_test.jsonl", "qa_unknown.jsonl"):
        (w / name).write_text("")
    with pytest.raises(LmlabError, match="no questions to grade"):
        retrieval_experiment(RetrievalConfig(model=str(tiny_model), world=str(w), device="cpu"))


def test_an_arm_checkpoint_without_a_chat_template(tiny_model, tiny_data):
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    from lmlab.evals.grounded import RetrievalConfig, retrieval_experiment

    cfg = RetrievalConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"),
                          retrieval_model=str(tiny_model), device="cpu")
    with pytest.raises(LmlabError, match="no chat template"):
        retrieval_experiment(cfg)


def test_passages_that_do_not_fit_the_context_are_refused(tiny_model, tiny_data):
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    from lmlab.evals.grounded import RetrievalConfig, retrieval_experiment

    cfg = RetrievalConfig(model=str(tiny_model), world=str(tiny_data.parent / "world"), k=3, stem=False,
                          device="cpu")
    with pytest.raises(LmlabError, match="lower k"):  # the tiny model's context is 96 tokens
        retrieval_experiment(cfg)


@pytest.fixture(scope="module")
def long_model(tiny_data, tmp_path_factory):
    """A one-layer model with a context long enough for a passage, a question and a reply in the tiny tokenizer."""
    from conftest import pretrain_tiny

    return pretrain_tiny(tiny_data, tmp_path_factory.mktemp("long_model"),
                         {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 192},
                         steps=10, batch_size=4, warmup_steps=2, eval_batches=1)


def test_end_to_end(long_model, tiny_data, tmp_path):
    pytest.importorskip("bm25s", reason="retrieval needs bm25s (the 'retrieval' extra)")
    from lmlab.evals.grounded import ARMS, GROUPS, RetrievalConfig, format_retrieval, retrieval_experiment

    out = tmp_path / "out"
    cfg = RetrievalConfig(model=str(long_model), world=str(tiny_data.parent / "world"), k=1, stem=False,
                          questions=4, max_new_tokens=12, device="cpu", out=str(out), runs=str(tmp_path / "runs"),
                          train=PostTrainConfig(steps=4, batch_size=4, eval_interval=0, threads=1))
    res = retrieval_experiment(cfg)
    assert set(res["arms"]) == set(ARMS) and res["tokens"]["eval_prompt_max"] + 12 <= 192
    for a in res["arms"].values():
        for g in GROUPS:
            x = a["groups"][g]
            assert x["n"] == 4 and sum(x[k]["k"] for k in ("accuracy", "hallucination_rate", "abstention_rate")) == 4
            assert sum(b["n"] for b in a["by_found"][g].values()) == 4
        assert a["groups"]["unknown"]["accuracy"]["k"] == 0
        assert a["by_found"]["unknown"]["nothing"]["n"] == 4  # nobody's biography names an unknown person
    assert res["retrieval"]["person_at_k"]["qa_test"]["rate"] == 1.0
    assert set(res["training"]) == set(ARMS) and (tmp_path / "runs" / "retrieval" / "checkpoint").is_dir()
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["arm"] for r in rows} == set(ARMS)
    train = [json.loads(line) for line in (out / "train_retrieval.jsonl").read_text().splitlines()]
    assert len(train) == res["train_conversations"] and all("Question: " in r["prompt"] for r in train)
    assert json.loads((out / "retrieval.json").read_text())["k"] == 1
    text = format_retrieval(res)
    assert "recall@1" in text and "ALCE citation recall" in text and "hallucinated" in text
    # Evaluating the arms already trained gives the same answers.
    again = retrieval_experiment(RetrievalConfig(
        model=str(long_model), world=str(tiny_data.parent / "world"), k=1, stem=False, questions=4,
        max_new_tokens=12, device="cpu", plain_model=str(tmp_path / "runs" / "plain" / "checkpoint"),
        retrieval_model=str(tmp_path / "runs" / "retrieval" / "checkpoint")))
    assert again["arms"] == res["arms"] and again["training"] == {}
