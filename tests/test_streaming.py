"""URG.stream_fuse (urg_ray/streaming.py): the fused answer piece by piece, no Ray.

The reference is always the non-streamed `URG.rank_and_fuse` on the same input, with Serve's
stop rule (cut before the first stop string, then strip) written out by hand here.
"""

import threading

import pytest

from urg_ray.streaming import apply_stop, stop_holdback, stop_then_fallback

QUESTION = "What is the capital of France?"
CANDIDATES = ["The capital of France is Paris, on the Seine.", "Paris is the capital and the largest city of France.",
              "Berlin."]
SILENT = "Name three primary colours."  # the tiny preset answers this one with EOS at once: a blank fusion
SILENT_CANDIDATES = ["Red, yellow and blue.", "Blue is one of them, with red.", "Green?"]


def cut_at(text: str, stop: str) -> str:
    return (text[: text.index(stop)] if stop in text else text).strip()


def test_stop_cuts_before_the_first_stop_string():
    assert apply_stop("Paris is big. Lyon too.", [" Lyon", "."]) == "Paris is big"
    assert apply_stop("no stop here", ["zzz", ""]) == "no stop here"


def test_the_stop_is_applied_before_the_blank_answers_fallback():
    assert stop_then_fallback("STOP and more", ["STOP"], " Top. STOP ") == ("Top.", True)
    assert stop_then_fallback("STOP and more", ["STOP"], None) == ("", False)
    assert stop_then_fallback(" Fused. STOP", ["STOP"], "Top.") == ("Fused.", False)
    assert stop_then_fallback("  ", [], "Top.") == ("Top.", True)


def test_stop_holdback_is_the_longest_suffix_that_begins_a_stop():
    assert stop_holdback("hello wor", ["world"]) == 3
    assert stop_holdback("ab", ["abc", "b!"]) == 2
    assert stop_holdback("hello", ["xyz", "o!"]) == 1
    assert stop_holdback("hello", ["xyz"]) == 0
    assert stop_holdback("hello world", ["world"]) == 0  # a whole stop string is cut, not held
    assert stop_holdback("anything", []) == 0


def test_streamed_pieces_join_to_the_greedy_answer_and_the_first_comes_early(tiny):
    expected = tiny.rank_and_fuse([QUESTION], [CANDIDATES], max_new_tokens=16, empty_fallback=True)[0]
    stream = tiny.stream_fuse(QUESTION, CANDIDATES, max_new_tokens=16, empty_fallback=True)
    assert stream.ranks == expected.ranks and stream.selected == expected.selected  # known before any piece
    assert stream.scores == pytest.approx(expected.scores)
    pieces = list(stream)
    assert expected.text and "".join(pieces) == expected.text
    assert len(pieces) >= 2 and all(pieces)
    # the first piece was handed out after the first token, not once all were decoded
    assert stream.tokens_at_first_piece == 1 < stream.generated_tokens
    assert stream.result.text == expected.text and stream.result.note == expected.note


def test_a_stop_string_across_a_piece_boundary_is_cut_and_generation_ends(tiny):
    pieces = list(tiny.stream_fuse(QUESTION, CANDIDATES, max_new_tokens=16))
    full = "".join(pieces)
    boundary = len(pieces[0]) + len(pieces[1])
    stop = full[boundary - 2: boundary + 2]  # two characters of each of the 2nd and 3rd pieces
    stream = tiny.stream_fuse(QUESTION, CANDIDATES, max_new_tokens=16, stop=[stop, "never occurs"])
    streamed = list(stream)
    assert "".join(streamed) == cut_at(full, stop) == stream.result.text
    assert not any(stop in piece for piece in streamed)
    # generation was stopped once the stop string appeared, not run to max_new_tokens
    assert stream.generated_tokens < len(tiny.tokenizer(full, add_special_tokens=False).input_ids)


def test_a_blank_fusion_streams_the_top_candidate_as_rank_and_fuse_answers(tiny):
    expected = tiny.rank_and_fuse([SILENT], [SILENT_CANDIDATES], max_new_tokens=16, empty_fallback=True)[0]
    assert expected.text == SILENT_CANDIDATES[expected.ranks[0]]  # the case under test: a blank fusion
    stream = tiny.stream_fuse(SILENT, SILENT_CANDIDATES, max_new_tokens=16, empty_fallback=True)
    assert "".join(stream) == expected.text and stream.result.note == expected.note
    stopped = tiny.stream_fuse(SILENT, SILENT_CANDIDATES, max_new_tokens=16, empty_fallback=True, stop=["?"])
    assert "".join(stopped) == cut_at(expected.text, "?")
    assert "".join(tiny.stream_fuse(SILENT, SILENT_CANDIDATES, max_new_tokens=16)) == ""  # fallback off


def test_fewer_candidates_than_top_k_is_noted_as_rank_and_fuse_notes(tiny):
    expected = tiny.rank_and_fuse([QUESTION], [CANDIDATES[:1]], top_k=3, max_new_tokens=8, empty_fallback=True)[0]
    stream = tiny.stream_fuse(QUESTION, CANDIDATES[:1], top_k=3, max_new_tokens=8, empty_fallback=True)
    assert "".join(stream) == expected.text and stream.result.note == expected.note is not None


def test_concurrent_streams_each_equal_their_own_answer_and_leave_the_decoder_on_sdpa(tiny):
    questions = [QUESTION, "Where is Paris?", "Which city is the capital?", "Tell me about the Seine."]
    # As test_learning's concurrency test: a fixed length, so a near-tie with EOS in the random
    # tiny weights cannot end one answer a token early (threads' float rounding may differ).
    kwargs = dict(max_new_tokens=12, min_new_tokens=12)
    expected = [tiny.rank_and_fuse([q], [CANDIDATES], **kwargs)[0].text for q in questions]
    got: dict[int, str] = {}

    def one(i: int) -> None:
        got[i] = "".join(tiny.stream_fuse(questions[i], CANDIDATES, **kwargs))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(questions))] == expected
    assert tiny.model.get_decoder().config._attn_implementation == "sdpa"


def test_a_generation_error_is_raised_to_the_reader(tiny):
    with pytest.raises(ValueError, match="num_beams"):
        list(tiny.stream_fuse(QUESTION, CANDIDATES, num_beams=2))  # HF streamers refuse beam search
