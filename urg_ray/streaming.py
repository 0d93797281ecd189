"""The fused answer as it is decoded: `URG.stream_fuse` ranks first, then iterates text pieces.

Generation runs in a thread of its own (Hugging Face `generate` with a streamer); the pieces
joined equal the text `URG.rank_and_fuse` answers for the same input, with `stop` and the blank
answer's fallback applied as Serve applies them (`stop_then_fallback`). A piece is held back while
it could still change: trailing whitespace (the final text is stripped), a suffix that could
begin a stop string, an incomplete UTF-8 character.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutput

if TYPE_CHECKING:
    from urg_ray.model import URG, FusionResult

log = logging.getLogger(__name__)
FALLBACK_NOTE = "the fused answer was empty: the top-ranked candidate is returned"
STREAM_THREAD = "urg-stream"  # the name of each FusionStream's generation thread
_END = object()


def apply_stop(text: str, stops: Sequence[str]) -> str:
    """`text` cut before the first occurrence of any stop string (OpenAI's rule); "" stops nothing."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def stop_then_fallback(text: str, stop: Sequence[str], fallback: str | None) -> tuple[str, bool]:
    """The answer Serve gives: `text` cut before its first stop string and stripped; if that is
    blank and a `fallback` (the top-ranked candidate) is given, the fallback cut the same way.
    Also whether the fallback was used. The stop comes first, so a stop string at position 0
    still gets the fallback."""
    if stop:
        text = apply_stop(text, stop).strip()
    if fallback is not None and not text.strip():
        return (apply_stop(fallback, stop).strip() if stop else fallback), True
    return text, False


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is the beginning of a stop string: those
    characters may yet turn into a stop string with the next token, so they wait."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class _TokenQueue(BaseStreamer):
    """Hands the tokens `generate` decodes to the reading thread (the decoder's start token skipped)."""

    def __init__(self):
        self.tokens: queue.Queue = queue.Queue()
        self._started = False

    def put(self, value: torch.Tensor) -> None:
        if not self._started:  # generate's first put is the decoder's start (its "prompt")
            self._started = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass  # the generating thread puts _END itself, after an exception too


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.size(0),), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class FusionStream:
    """One question's fused answer, piece by piece: `for piece in stream`. The ranking is known
    before the first piece (`ranks`, `scores`, `selected`); after the last, `result` is the
    FusionResult whose text is the pieces joined. `generated_tokens` counts the tokens decoded
    so far; `tokens_at_first_piece` how many had been when the first piece was handed out."""

    def __init__(self, urg: URG, states: torch.Tensor, mask: torch.Tensor, candidates: Sequence[str],
                 result: FusionResult, stop: Sequence[str], empty_fallback: bool, max_new_tokens: int,
                 generate_kwargs: dict[str, Any]):
        self.ranks, self.scores, self.selected = result.ranks, result.scores, result.selected
        self.generated_tokens = 0
        self.tokens_at_first_piece: int | None = None
        self.result: FusionResult | None = None
        self._urg, self._candidates, self._draft = urg, list(candidates), result
        self._stop, self._fallback = [s for s in stop if s], empty_fallback
        self._tokens, self._cancel = _TokenQueue(), threading.Event()
        criteria = StoppingCriteriaList([*generate_kwargs.pop("stopping_criteria", []), _Cancelled(self._cancel)])
        kwargs = dict(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                      max_new_tokens=max_new_tokens, streamer=self._tokens, stopping_criteria=criteria,
                      **generate_kwargs)
        self._thread = threading.Thread(target=self._generate, args=(kwargs,), name=STREAM_THREAD, daemon=True)
        self._thread.start()

    def _generate(self, kwargs: dict[str, Any]) -> None:
        try:
            with torch.no_grad():
                self._urg.model.generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - raised in the reading thread
            self._tokens.tokens.put(err)
        finally:
            self._tokens.tokens.put(_END)

    def close(self) -> None:
        """Stop generating (e.g. the client went away); the thread ends after its current step."""
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        ids: list[int] = []
        sent = ""
        stopped = False
        try:
            while (item := self._tokens.tokens.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if stopped:
                    continue
                ids.extend(item)
                self.generated_tokens = len(ids)
                text = self._decode(ids).lstrip()
                if apply_stop(text, self._stop) != text:  # a stop string: the answer is complete
                    self.close()
                    stopped = True
                    continue
                ready = text[: len(text) - stop_holdback(text, self._stop)].rstrip().rstrip("\ufffd").rstrip()
                if len(ready) > len(sent) and ready.startswith(sent):
                    if self.tokens_at_first_piece is None:
                        self.tokens_at_first_piece = len(ids)
                    yield ready[len(sent):]
                    sent = ready
        finally:
            self.close()
        self.result = self._finish(ids)
        final = self.result.text
        if not final.startswith(sent):  # a tokenizer whose decode of a prefix is not a prefix
            log.warning("streamed pieces %r are not a prefix of the final text %r", sent, final)
        elif len(final) > len(sent):
            if self.tokens_at_first_piece is None:
                self.tokens_at_first_piece = len(ids)
            yield final[len(sent):]

    def _decode(self, ids: list[int]) -> str:
        return self._urg.tokenizer.decode(ids, skip_special_tokens=True)

    def _finish(self, ids: list[int]) -> FusionResult:
        """The text rank_and_fuse gives (stripped), with Serve's `stop_then_fallback`."""
        from urg_ray.model import FusionResult

        notes = [self._draft.note] if self._draft.note else []
        fallback = self._candidates[self.ranks[0]] if self._fallback else None
        text, fell_back = stop_then_fallback(self._decode(ids).strip(), self._stop, fallback)
        if fell_back:
            notes.append(FALLBACK_NOTE)
        return FusionResult(text, self.ranks, self.scores, self.selected, "; ".join(notes) or None)
