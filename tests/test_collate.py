"""Records into tensors (urg_ray/collate.py): the pair collator and the quality matrix."""

import torch

from urg_ray.collate import Collator, quality_matrix
from urg_ray.data import as_records
from urg_ray.presets import tiny_tokenizer

from conftest import make_record


def test_quality_matrix_pads_each_record_with_minus_inf():
    rows = [make_record(0, n=2).model_dump(), make_record(1, n=3)]  # a dict row and a Record
    records = as_records(rows)
    assert records[0] == make_record(0, n=2) and records[1] is rows[1]
    assert quality_matrix(records).tolist() == [[0.0, 10.0, float("-inf")], [0.0, 10.0, 20.0]]


def test_collator_builds_question_response_pairs_and_labels():
    tok = tiny_tokenizer()
    collate = Collator(tok, source_max_length=16, candidate_max_length=8, target_max_length=6)
    batch = collate([make_record(0, n=2), make_record(1, n=3)])
    assert batch.input_ids.shape[:2] == (2, 3)
    assert batch.candidate_mask.tolist() == [[True, True, False], [True, True, True]]
    first = tok.decode(batch.input_ids[0, 1][batch.attention_mask[0, 1].bool()])
    assert first.replace(" ", "") == "<Question>question0:wheredidthecatsit?</s><response>answer1thecat</s>"
    assert batch.quality[0].tolist() == [0.0, 10.0, float("-inf")]
    assert (batch.labels[:, -1] == tok.eos_token_id).any() and batch.labels.shape[1] <= 6
    assert torch.all(batch.input_ids[0, 2] == tok.pad_token_id)


def test_empty_strings_are_valid_candidates():
    tok = tiny_tokenizer()
    batch = Collator(tok).encode_pairs([""], [["", "x"]])
    # <Question> </s> <response> </s>: four template tokens, nothing else
    assert batch.attention_mask[0, 0].sum().item() == 4
