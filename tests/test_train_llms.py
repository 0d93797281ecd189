"""urg_ray/train_llms.py: a tiny LLM trained on a card's answers states its topic's facts, a
random-init one does not (measured on held-out questions); the saved folder is an HF chat model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from urg_ray.train_llms import (PIPELINE_LLMS, LLMTrainConfig, answer_questions, chat_pairs, chat_tokenizer,
                                encode_pairs, fit_lm, lm_batch, new_model, question_of, reference_fact_recall,
                                save_llm, topic_fact_recall)


def test_pairs_are_the_cards_own_answers():
    from urg_ray.synthetic import make_examples

    pairs = chat_pairs("koala-7B-HF", 5, seed=3)
    examples = make_examples(5, n_candidates=2, seed=3, score=False)
    assert pairs == [(question_of(ex.record), ex.record["candidates"][1]["text"]) for ex in examples]
    assert examples[0].record["candidates"][1]["model"] == "koala-7B-HF"
    with pytest.raises(ValueError, match="unknown model card 'gpt-9'"):
        chat_pairs("gpt-9", 1, seed=0)


def test_loss_is_on_the_answer_and_its_eos_only():
    tok = chat_tokenizer()
    (ids, start), = encode_pairs(tok, [("What is a kiln?", "A kiln is hot.")], max_length=64)
    assert tok.decode(ids[:start]).strip() == "user: What is a kiln?\nassistant:"
    input_ids, mask, labels = lm_batch([(ids, start), (ids[:start + 2], start)], tok.pad_token_id)
    assert (labels[0, :start] == -100).all() and labels[0, start:].tolist() == ids[start:]
    assert labels[0, -1].item() == tok.eos_token_id
    assert mask[1].sum().item() == start + 2 and (labels[1, start + 2:] == -100).all()


def test_every_pipeline_llm_is_a_known_card_and_architecture():
    from urg_ray.synthetic import MODELS
    from urg_ray.tiny_llms import TINY_MODELS

    assert [llm.card for llm in PIPELINE_LLMS.values()] == list(MODELS[:3])  # make_dataset(n_candidates=3)'s twins
    assert all(TINY_MODELS[llm.architecture].architecture != "bart" for llm in PIPELINE_LLMS.values())


@pytest.mark.slow  # trains a small LLM for 600 steps on the CPU (~1-2 min on 2 free cores; no Ray)
def test_trained_llm_states_its_topics_facts_better_than_random_init(tmp_path):
    from urg_ray.synthetic import make_examples
    from urg_ray.synthetic_world import TOPICS

    llm = PIPELINE_LLMS["tiny-oasst"]
    named = {"question_names_facts": True}  # the pipeline's questions: they name the facts asked
    cfg = replace(LLMTrainConfig(), steps=600, synthetic=named)  # batch 32: 300 x 16 was too few to learn the topics
    tok = chat_tokenizer()
    encoded = encode_pairs(tok, chat_pairs(llm.card, cfg.n_questions, cfg.question_seed, named), cfg.max_length)
    trained = new_model(llm.architecture, tok, seed=0).train()
    losses = fit_lm(trained, encoded, cfg, tok.pad_token_id)
    save_llm(trained, tok, llm, cfg, tmp_path / "trained")
    save_llm(new_model(llm.architecture, tok, seed=0), tok, llm, cfg, tmp_path / "random")

    held_out = make_examples(24, n_candidates=1, seed=7, score=False, **named)  # not the training seed (100)
    questions = [question_of(ex.record) for ex in held_out]
    other_topic = [(TOPICS[(TOPICS.index(ex.topics[0]) + 7) % 40],) for ex in held_out]  # a control: not asked about
    share = {}
    for name in ("trained", "random"):
        answers = answer_questions(tmp_path / name, questions, max_new_tokens=64, temperature=0)
        share[name] = sum(topic_fact_recall(a, ex.topics) for a, ex in zip(answers, held_out)) / len(held_out)
        share[f"{name}, other topic"] = (sum(topic_fact_recall(a, t) for a, t in zip(answers, other_topic))
                                         / len(held_out))
        share[f"{name}, reference facts"] = (sum(reference_fact_recall(a, ex) for a, ex in zip(answers, held_out))
                                             / len(held_out))
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 2.0
    assert share["random"] < 0.1 and share["trained"] > share["random"] + 0.15, share
    # its words come from the facts of the topic asked about, not just the world's vocabulary
    assert share["trained"] > 2 * share["trained, other topic"], share
    # and it states facts the question asked for, word for word (the pipeline's run: 0.21 sampled at temperature 1)
    assert share["random, reference facts"] == 0 and share["trained, reference facts"] > 0.1, share
    files = {p.name for p in (tmp_path / "trained").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert json.loads((tmp_path / "trained" / "URG_RAY_LLM.json").read_text())["llm"]["card"] == llm.card


def test_answers_come_from_the_llm_layer_and_a_failed_one_names_the_folder(tmp_path):
    llm = PIPELINE_LLMS["tiny-koala"]
    tok = chat_tokenizer()
    save_llm(new_model(llm.architecture, tok, seed=0), tok, llm, LLMTrainConfig(), tmp_path / "random")
    questions = ["What is a kiln?", "List some facts about the harbor."]
    first = answer_questions(tmp_path / "random", questions, max_new_tokens=8, temperature=1.0, seed=3)
    assert first == answer_questions(tmp_path / "random", questions, max_new_tokens=8, temperature=1.0, seed=3)
    assert len(first) == 2 and all(isinstance(a, str) for a in first)
    too_long = " ".join(["kiln"] * 600)  # over the tiny models' 512 positions
    with pytest.raises(RuntimeError, match=r"random: 1 of 2 answers failed, e.g. ValueError: prompt has"):
        answer_questions(tmp_path / "random", [questions[0], too_long], max_new_tokens=4)


def test_synthetic_knobs_of_the_job_are_checked():
    import train_llms as job

    assert job.synthetic_knobs(["question_names_facts=true", "min_facts=2"]) == {"question_names_facts": True,
                                                                                   "min_facts": 2}
    with pytest.raises(ValueError, match=r"unknown SyntheticConfig knobs \['colour'\]"):
        job.synthetic_knobs(["colour=1"])
    with pytest.raises(ValueError, match="coverage must be in"):
        job.synthetic_knobs(["coverage=3"])
    assert job.main(["--synthetic", "question_names_facts"]) == 2  # no "=": a named error, nothing trained


def test_named_pairs_ask_for_the_facts_the_answer_states():
    from urg_ray.synthetic_facts import stated_facts

    (question, answer), = chat_pairs("alpaca-native", 1, seed=3, synthetic={"question_names_facts": True})
    asked, stated = question.rsplit("Say ", 1)[1], stated_facts(answer, ("kiln",))
    assert stated and all(f.verb in asked for f in stated)


def test_reference_fact_recall_reads_the_facts_in_the_world_they_were_asked_in():
    """A reference states all of its own facts, but only when read in its own (non-default) world."""
    from urg_ray.synthetic import SyntheticConfig, make_examples
    from urg_ray.train_llms import reference_fact_recall

    knobs = dict(question_names_facts=True, world_seed=7)
    examples = make_examples(20, n_candidates=1, seed=3, score=False, **knobs)
    world = SyntheticConfig(**knobs)
    assert [reference_fact_recall(ex.record["output"], ex, world) for ex in examples] == [1.0] * 20
    # the default world's verbs differ
    assert sum(reference_fact_recall(ex.record["output"], ex) for ex in examples) < 20
