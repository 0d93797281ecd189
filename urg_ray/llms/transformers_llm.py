"""The `transformers` engine: a Hugging Face causal (or seq2seq, e.g. flan-t5) LM, batched `generate`.

Conversations that share sampling settings (max_tokens and stop aside; the seed included, so an
answer does not depend on its batch mates) are generated in one left-padded batch; each answer is
cut at its own max_tokens, at EOS and at its first stop string. A prompt at or over
`max_model_len` tokens, or a batch that raises, costs only the conversations concerned: the batch
is retried one by one. presence/frequency penalties are not applied (transformers has
no such knobs). Tokenizers without a chat template get `PLAIN_CHAT_TEMPLATE` when chat is on.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from urg_ray.llms.base import LLM, Answer, Conversation, Sampling, failed, per_item, register
from urg_ray.llms.chat import PLAIN_CHAT_TEMPLATE
from urg_ray.llms.spec import prompt_of

log = logging.getLogger(__name__)


@register("transformers")
class TransformersLLM(LLM):
    def __init__(self, spec):
        super().__init__(spec)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from urg_ray.tiny_llms import resolve_model_source

        path = resolve_model_source(spec.model_source)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray hides GPUs an actor did not ask for
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if spec.uses_chat and (spec.chat_template or not self.tokenizer.chat_template):
            self.tokenizer.chat_template = spec.chat_template or PLAIN_CHAT_TEMPLATE
        config = AutoConfig.from_pretrained(path)
        self.seq2seq = config.is_encoder_decoder
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_model_len = min(spec.max_model_len, positions) if positions else spec.max_model_len
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
        auto = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = auto.from_pretrained(path, dtype=dtype).to(self.device).eval()

    def prompt(self, conversation: Conversation) -> str:
        if self.spec.uses_chat:
            return self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return prompt_of(conversation)

    def count_prompt_tokens(self, conversation: Conversation) -> int | None:
        return len(self.tokenizer(self.prompt(conversation))["input_ids"])

    def generate(self, conversations: Sequence[Conversation],
                 sampling: Sampling | Sequence[Sampling]) -> list[Answer]:
        samplings = per_item(sampling, len(conversations))
        answers: list[Answer | None] = [None] * len(conversations)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samplings):  # one generate() call per sampling setting and seed
            groups.setdefault((s.temperature, s.top_p, s.seed), []).append(i)
        for members in groups.values():
            try:
                batch = self._generate_batch([conversations[i] for i in members], [samplings[i] for i in members])
            except Exception:  # noqa: BLE001 - find the conversations responsible, one by one
                batch = [self._generate_one(conversations[i], samplings[i]) for i in members]
            for i, answer in zip(members, batch):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _generate_one(self, conversation: Conversation, sampling: Sampling) -> Answer:
        try:
            return self._generate_batch([conversation], [sampling])[0]
        except Exception as err:  # noqa: BLE001 - recorded on the answer
            log.warning("%s failed on one conversation: %s", self.spec.name, err)
            return failed(err)

    def _generate_batch(self, conversations: Sequence[Conversation], samplings: list[Sampling]) -> list[Answer]:
        import torch

        tok, first = self.tokenizer, samplings[0]
        start = time.perf_counter()
        prompts = [self.prompt(c) for c in conversations]
        lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
        too_long = {i for i, n in enumerate(lengths) if n >= self.max_model_len}
        answers: list[Answer | None] = [
            failed(f"ValueError: prompt has {lengths[i]} tokens; max_model_len is {self.max_model_len}")
            if i in too_long else None for i in range(len(prompts))]
        todo = [i for i in range(len(prompts)) if i not in too_long]
        if not todo:
            return answers  # type: ignore[return-value]
        enc = tok([prompts[i] for i in todo], return_tensors="pt", padding=True).to(self.device)
        if first.seed is not None:
            torch.manual_seed(first.seed)
        sample = (dict(do_sample=True, temperature=first.temperature, top_p=first.top_p) if first.temperature > 0
                  else {"do_sample": False})
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max(samplings[i].max_tokens for i in todo),
                                      pad_token_id=tok.pad_token_id, **sample)
        latency = time.perf_counter() - start  # the batch's generation time
        # causal LMs return prompt + answer; seq2seq ones decoder start + answer
        rows = out[:, 1 if self.seq2seq else enc["input_ids"].shape[1]:].tolist()
        for i, row in zip(todo, rows):
            row = row[: samplings[i].max_tokens]
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            text = tok.decode(row, skip_special_tokens=True)
            for stop in samplings[i].stop:
                text = text.split(stop, 1)[0]
            answers[i] = Answer(text.strip() if self.spec.uses_chat else text, prompt_tokens=lengths[i],
                                completion_tokens=len(row), latency_s=latency)
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
