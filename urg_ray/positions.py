"""Learned absolute position embeddings for a randomly initialised T5 (the `tiny` preset).

T5 knows positions only through a relative attention bias. Pretrained flan-t5 copies from its
input anyway; a random-init T5 trained on a CPU budget does not start copying within ~1000
steps, so it never learns to fuse. Adding a learned absolute position (inside each candidate on
the encoder side, inside the answer on the decoder side) to the token embeddings makes copying
emerge within a few hundred steps (measured; docs/design.md). The relative bias stays.

They attach through forward pre-hooks on the encoder and decoder stacks (public
`register_forward_pre_hook`), so generation with a KV cache works unchanged: the decoder's
offset is the cache's length.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

POSITIONS_FILE = "positions.safetensors"


class AbsolutePositions(nn.Module):
    def __init__(self, max_positions: int, d_model: int):
        super().__init__()
        self.encoder = nn.Embedding(max_positions, d_model)
        self.decoder = nn.Embedding(max_positions, d_model)
        for table in (self.encoder, self.decoder):
            nn.init.normal_(table.weight, std=0.02)
        self._hooks: list = []

    def attach(self, model) -> "AbsolutePositions":
        self._hooks = [
            model.get_encoder().register_forward_pre_hook(partial(_add_positions, table=self.encoder),
                                                          with_kwargs=True),
            model.get_decoder().register_forward_pre_hook(partial(_add_positions, table=self.decoder),
                                                          with_kwargs=True),
        ]
        return self


def _add_positions(stack: nn.Module, args: tuple, kwargs: dict, table: nn.Embedding):
    input_ids = kwargs.pop("input_ids", None)
    if input_ids is None and args:
        input_ids, args = args[0], args[1:]
    if input_ids is None:  # a caller passing inputs_embeds handles positions itself
        return args, kwargs
    # transformers 5.24 (installed here) hands the stack its KV cache as `cache`; earlier: `past_key_values`
    past = kwargs.get("cache", kwargs.get("past_key_values"))
    offset = past.get_seq_length() if past is not None else 0
    length = input_ids.shape[-1]
    if offset + length > table.num_embeddings:
        raise ValueError(f"sequence of {offset + length} tokens exceeds the {table.num_embeddings} learned positions")
    positions = torch.arange(offset, offset + length, device=input_ids.device)
    kwargs["inputs_embeds"] = stack.embed_tokens(input_ids) + table(positions).to(stack.embed_tokens.weight.dtype)
    return args, kwargs
