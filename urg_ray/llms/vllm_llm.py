"""The `vllm-actor` engine: `vllm.LLM` in-process (in jobs: in our own Ray Data actor pool), for
vLLM builds Ray's `ray.data.llm` processor does not suit. Engine `vllm` itself runs on Ray's own
paths: `urg_ray.generate_engines` (batch) and `serve/candidates.py` (`LLMServer`, online)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from urg_ray.llms.base import LLM, Answer, Conversation, Sampling, failed, per_item, register
from urg_ray.llms.chat import PLAIN_CHAT_TEMPLATE, lacks_chat_template
from urg_ray.llms.spec import prompt_of


def vllm_engine_kwargs(spec) -> dict[str, Any]:
    return {"dtype": spec.dtype, "max_model_len": spec.max_model_len,
            "tensor_parallel_size": getattr(spec, "tensor_parallel_size", 1), **spec.engine_kwargs}


def sampling_params(s: Sampling) -> dict[str, Any]:
    return dict(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed, stop=s.stop or None,
                presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty)


@register("vllm-actor")
class VLLMActorLLM(LLM):
    def __init__(self, spec):
        super().__init__(spec)
        from vllm import LLM as VLLM

        from urg_ray.tiny_llms import resolve_model_source

        source = resolve_model_source(spec.model_source)
        self.chat_template = spec.chat_template or (PLAIN_CHAT_TEMPLATE if lacks_chat_template(source) else None)
        self.llm = VLLM(model=source, **vllm_engine_kwargs(spec))
        self.max_model_len = spec.max_model_len

    def count_prompt_tokens(self, conversation: Conversation) -> int | None:
        tok = self.llm.get_tokenizer()
        if self.spec.uses_chat:
            return len(tok.apply_chat_template(list(conversation), chat_template=self.chat_template,
                                               add_generation_prompt=True, tokenize=True))
        return len(tok(prompt_of(conversation))["input_ids"])

    def generate(self, conversations: Sequence[Conversation],
                 sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        from vllm import SamplingParams

        params = [SamplingParams(**sampling_params(s)) for s in per_item(sampling, len(conversations))]
        start = time.perf_counter()
        try:
            outs = self._run(list(conversations), params)
        except Exception:  # noqa: BLE001 - find the conversations responsible, one by one
            outs = []
            for c, p in zip(conversations, params):
                try:
                    outs.append(self._run([c], [p])[0])
                except Exception as err:  # noqa: BLE001 - recorded on the answer
                    outs.append(err)
        latency = time.perf_counter() - start
        return [failed(o, latency) if isinstance(o, Exception) else
                Answer(o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids or []),
                       completion_tokens=len(o.outputs[0].token_ids), latency_s=latency) for o in outs]

    def _run(self, conversations: list[Conversation], params: list) -> list:
        if self.spec.uses_chat:
            return self.llm.chat(conversations, params, chat_template=self.chat_template, use_tqdm=False)
        return self.llm.generate([prompt_of(c) for c in conversations], params, use_tqdm=False)
