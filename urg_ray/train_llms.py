"""Candidate LLMs that know the synthetic world: tiny causal LMs trained, on Ray Train, to answer
synthetic questions the way one synthetic model card does (its per-task error rates, its style).

LLM ``m`` is trained on (question, answer) pairs where the answer is the text `urg_ray.synthetic`
writes for card ``m``; sampled at temperature 1 it then errs where its card errs, so the LLMs
differ as the cards do (each best at some task, none at all). By default a reference is a random
subset of a topic's fact pool that the question does not name, so no LLM can be right: it can learn
the topic's facts, the task's template and its card's habits. With the synthetic knob
``question_names_facts`` (the pipeline's setting) the question names the facts asked, so an LLM
that learned the world can state the reference's facts.

    from urg_ray.train_llms import LLMTrainConfig, train_llm
    train_llm(PIPELINE_LLMS["tiny-oasst"], LLMTrainConfig(), "outputs/llms/tiny-oasst")

Each result is an ordinary `save_pretrained` folder with its tokenizer and chat template
(`urg_ray.llms.chat.PLAIN_CHAT_TEMPLATE`), which vLLM, transformers and `ray.data.llm` load.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from urg_ray.durable import replace_folder
from urg_ray.llms.chat import PLAIN_CHAT_TEMPLATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateLLM:
    """One trained candidate: the synthetic card it imitates and the tiny architecture it has."""

    name: str
    card: str  # a key of urg_ray.synthetic.MODEL_CARDS
    architecture: str  # a key of urg_ray.tiny_llms.TINY_MODELS (its config; weights are trained here)


# The first three cards, in MODELS order (so `make_dataset(n_candidates=3)` is their synthetic twin):
# oasst is best at define and benefits, koala at list and compare, alpaca at steps.
PIPELINE_LLMS: dict[str, CandidateLLM] = {c.name: c for c in (
    CandidateLLM("tiny-oasst", "oasst-sft-4-pythia-12b-epoch-3.5", "tiny-llama-a"),
    CandidateLLM("tiny-koala", "koala-7B-HF", "tiny-gpt2"),
    CandidateLLM("tiny-alpaca", "alpaca-native", "tiny-llama-a"),
)}


@dataclass(frozen=True)
class LLMTrainConfig:
    """Defaults train one tiny LLM in about 2-3 minutes on 2 CPU cores (steps * batch_size answers)."""

    n_questions: int = 6000  # synthetic training questions (seed below; the pipeline's splits use 0-2)
    question_seed: int = 100
    steps: int = 500
    batch_size: int = 32  # 500 steps * 32 = 16,000 answers: each question seen ~2.7 times
    lr: float = 3e-3
    warmup_steps: int = 30
    max_length: int = 192  # prompt + answer tokens; longer pairs are cut
    seed: int = 0
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig knobs of the questions


def question_of(record: dict[str, Any]) -> str:
    """The question as `jobs/generate.py` sends it (`urg_ray.generate.Prompt.question`)."""
    from urg_ray.data import join_question  # here, not at the top: this module stays free of torch

    return join_question(record["instruction"], record["input"])


def chat_pairs(card: str, n: int, seed: int, synthetic: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(question, answer of `card`) for `n` synthetic questions (`synthetic`: SyntheticConfig knobs)."""
    from urg_ray.synthetic import MODELS, make_examples

    if card not in MODELS:
        raise ValueError(f"unknown model card {card!r}; known: {list(MODELS)}")
    n_candidates = MODELS.index(card) + 1
    examples = make_examples(n, n_candidates=n_candidates, seed=seed, score=False, **(synthetic or {}))
    return [(question_of(ex.record), ex.record["candidates"][n_candidates - 1]["text"]) for ex in examples]


def chat_tokenizer():
    """The project's tiny tokenizer with the plain chat template the LLMs are trained on."""
    from urg_ray.presets import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of "user: Q\\nassistant:" + " answer</s>", and where the answer starts."""
    encoded = []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append(((prompt_ids + answer_ids)[:max_length], len(prompt_ids)))
    return encoded


def new_model(architecture: str, tokenizer, seed: int):
    """A random-init model with the config of tiny model `architecture`."""
    import torch
    from transformers import AutoModelForCausalLM

    from urg_ray.tiny_llms import TINY_MODELS, _build_config

    if architecture not in TINY_MODELS or TINY_MODELS[architecture].architecture == "bart":
        raise ValueError(f"unknown causal tiny architecture {architecture!r}; known: {sorted(TINY_MODELS)}")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_build_config(TINY_MODELS[architecture], tokenizer))


def lm_batch(encoded: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding: the loss
    is on the answer and its </s> only)."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, answer_start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, answer_start: len(ids)] = torch.tensor(ids[answer_start:])
    return input_ids, mask, labels


def fit_lm(model, encoded: list[tuple[list[int], int]], cfg: LLMTrainConfig, pad_id: int, rank: int = 0,
           world: int = 1, name: str = "llm") -> list[float]:
    """The loop: `cfg.steps` AdamW steps of next-token loss on answers drawn (seeded, with
    replacement) from `encoded`; each of `world` ranks takes every world-th of a global batch."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(
        0.05, 0.5 * (1 + math.cos(math.pi * s / cfg.steps))))  # warm-up, then cosine to 5%
    order = random.Random(cfg.seed)
    losses = []
    for step in range(cfg.steps):
        batch = [encoded[order.randrange(len(encoded))] for _ in range(cfg.batch_size * world)][rank::world]
        input_ids, mask, labels = lm_batch(batch, pad_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if rank == 0 and (step + 1) % 100 == 0:
            log.warning("%s step %d/%d loss %.3f", name, step + 1, cfg.steps, sum(losses[-100:]) / 100)
    return losses


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Set-up, loop (next-token loss on the answer), save: the HF folder is the one checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    cfg, llm = LLMTrainConfig(**config["train"]), CandidateLLM(**config["llm"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    tokenizer = chat_tokenizer()
    encoded = encode_pairs(tokenizer, chat_pairs(llm.card, cfg.n_questions, cfg.question_seed, cfg.synthetic),
                           cfg.max_length)
    model = ray.train.torch.prepare_model(new_model(llm.architecture, tokenizer, cfg.seed).train())
    started = time.time()
    losses = fit_lm(model, encoded, cfg, tokenizer.pad_token_id, rank, world, name=llm.name)
    metrics = {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "train_s": round(time.time() - started, 1)}
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            save_llm(getattr(model, "module", model), tokenizer, llm, cfg, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)


def save_llm(model, tokenizer, llm: CandidateLLM, cfg: LLMTrainConfig, path: str | os.PathLike) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # writes chat_template.jinja
    Path(path, "URG_RAY_LLM.json").write_text(json.dumps({"llm": asdict(llm), "train": asdict(cfg)}, indent=2))


def train_llm(llm: CandidateLLM, cfg: LLMTrainConfig, out_dir: str | os.PathLike,
              storage_path: str | os.PathLike = "runs") -> dict:
    """Train `llm` on Ray Train (Ray must be up) and put its HF folder at `out_dir` (replaced whole)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"train": asdict(cfg), "llm": asdict(llm)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"llm-{llm.name}", storage_path=str(Path(storage_path).resolve())))
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        replace_folder(d, out_dir)
    return {**result.metrics, "wall_s": round(time.time() - started, 1), "path": str(out_dir)}


def answer_questions(model_dir: str | os.PathLike, questions: list[str], max_new_tokens: int = 96,
                     temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Answers of a saved LLM folder by the candidate-LLM layer's transformers engine (its chat
    template; sampling, 0 = greedy); a failed answer raises, naming the folder."""
    from urg_ray.llms import Sampling, build
    from urg_ray.llms.spec import LLMSpec

    llm = build(LLMSpec(name=Path(model_dir).name, engine="transformers", source=str(model_dir), chat=True,
                        dtype="float32"))
    try:
        answers = llm.generate([[{"role": "user", "content": q}] for q in questions],
                               Sampling(max_tokens=max_new_tokens, temperature=temperature, seed=seed))
    finally:
        llm.close()
    errors = [a.error for a in answers if not a.ok]
    if errors:
        raise RuntimeError(f"{model_dir}: {len(errors)} of {len(questions)} answers failed, e.g. {errors[0]}")
    return [a.text for a in answers]


def reference_fact_recall(answer: str, example, config=None) -> float:
    """Share of a `urg_ray.synthetic.SyntheticExample`'s reference facts the answer states, read in
    the world of `config` (a `SyntheticConfig`; default: the default world)."""
    from urg_ray.synthetic_facts import stated_facts

    stated = set(stated_facts(answer, example.topics, config))
    return sum(f in stated for f in example.reference_facts) / len(example.reference_facts)


def topic_fact_recall(answer: str, topics: tuple[str, ...], world_seed: int = 0) -> float:
    """Share of the answer's content words that belong to the facts of its question's topics
    (an answer naming none of them scores 0)."""
    from urg_ray.synthetic import SyntheticConfig
    from urg_ray.synthetic_world import topic_pool

    vocab = {w for t in topics for f in topic_pool(t, SyntheticConfig(world_seed=world_seed))
             for w in f"{f.verb} {f.rest}".split() if w not in ("the", "a", "an", "some", "every")}
    words = [w.strip(".,!?:").lower() for w in answer.split()]
    hits = [w for w in words if w in vocab]
    return len(hits) / max(1, len(words))
