"""Model-side helpers for serving (`serve/` calls these; it holds no model code of its own).

- `resolve_urg_source`: the checkpoint folder when it exists, else a preset (the CPU default).
- `lacks_chat_template`: whether a local model folder needs `PLAIN_CHAT_TEMPLATE` to chat.
- `ChatLM`: a Hugging Face causal LM answering chat conversations in batches (the `transformers`
  candidate kind). Tokenizers without a chat template (the tiny local LLMs) get a plain
  ``role: text`` one.

Imports neither Ray nor Serve.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

# "role: text" lines, then "assistant:" when a reply is wanted.
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")


def resolve_urg_source(model: str | os.PathLike, fallback_preset: str | None = "tiny") -> str:
    """`model` when it is a `save_pretrained` folder or a preset name, else `fallback_preset`.

    With no fallback a missing folder is an error: on a cluster a typo in a checkpoint path must
    not quietly serve random weights.
    """
    from urg_ray.presets import PRESETS

    model = str(model)
    if Path(model).is_dir() or model in PRESETS:
        return model
    if fallback_preset is None:
        raise FileNotFoundError(f"URG checkpoint {model!r} is neither a folder nor a preset "
                                f"({', '.join(sorted(PRESETS))}), and no fallback preset is set")
    log.warning("URG checkpoint %r not found; serving the %r preset instead", model, fallback_preset)
    return fallback_preset


def lacks_chat_template(source: str | os.PathLike) -> bool:
    """True for a local model folder whose tokenizer has no chat template (the tiny LLMs), so a
    server must be given one. Hub ids are assumed to ship theirs."""
    path = Path(source)
    if not path.is_dir():
        return False
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return False
    config = path / "tokenizer_config.json"
    return not (config.is_file() and "chat_template" in json.loads(config.read_text()))


class ChatLM:
    """A causal LM that answers chat conversations; one `generate` call per batch (left padding)."""

    def __init__(self, source: str, chat_template: str | None = None, dtype: str = "float32",
                 max_prompt_tokens: int = 384):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from urg_ray.tiny_llms import resolve_model_source

        path = resolve_model_source(source)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if chat_template or not self.tokenizer.chat_template:
            self.tokenizer.chat_template = chat_template or PLAIN_CHAT_TEMPLATE
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.max_prompt_tokens = max_prompt_tokens

    def generate(self, conversations: Sequence[Sequence[dict]], max_new_tokens: Sequence[int],
                 temperature: float = 0.0) -> list[str]:
        """One answer per conversation (a list of {role, content}); answer i has at most
        max_new_tokens[i] tokens. temperature 0 is greedy."""
        import torch

        tok = self.tokenizer
        prompts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations]
        # Truncate from the left: the end of the conversation is what the answer follows.
        tok.truncation_side = "left"
        encoded = tok(prompts, return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_prompt_tokens).to(self.device)
        sample = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**encoded, max_new_tokens=max(max_new_tokens), pad_token_id=tok.pad_token_id,
                                      **sample)
        answers = []
        for row, limit in zip(out[:, encoded["input_ids"].shape[1]:].tolist(), max_new_tokens):
            row = row[:limit]
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            answers.append(tok.decode(row, skip_special_tokens=True).strip())
        return answers
