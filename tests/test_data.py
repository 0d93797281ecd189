import json

import pytest
import torch

from urg_ray.data import Collator, DataError, Record, quality, read_records, write_records
from urg_ray.presets import tiny_tokenizer

from conftest import make_record

MIXINSTRUCT_LINE = {
    "id": "unified_chip2/69962", "instruction": "", "input": "What is a skeptic?", "output": "Someone who doubts.",
    "candidates": [
        {"decoding_method": "top_p_sampling", "model": "oasst-sft-4-pythia-12b-epoch-3.5", "text": "A doubter.",
         "scores": {"logprobs": -0.02, "bleu": 5.6, "bertscore": 0.75, "rouge1": 0.28, "bartscore": -3.1}},
        {"decoding_method": "top_p_sampling", "model": "koala-7B-HF", "text": "No idea.",
         "scores": {"logprobs": -0.5, "bleu": 1.2, "bertscore": 0.6, "rouge1": 0.1, "bartscore": -4.0}},
    ],
    "cmp_results": json.dumps({"oasst-sft-4-pythia-12b-epoch-3.5,koala-7B-HF": "A is better"}),
}


def test_reads_the_public_mixinstruct_record_as_is(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(MIXINSTRUCT_LINE) + "\n\n" + json.dumps({**MIXINSTRUCT_LINE, "id": "b"}) + "\n")
    records = read_records(path)
    assert [r.id for r in records] == ["unified_chip2/69962", "b"]
    assert records[0].candidates[1].model == "koala-7B-HF"
    assert json.loads(records[0].cmp_results) == {"oasst-sft-4-pythia-12b-epoch-3.5,koala-7B-HF": "A is better"}
    assert records[0].question == "What is a skeptic?"


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_write_then_read_round_trips_with_varying_n(tmp_path, suffix):
    records = [make_record(0, n=2), make_record(1, n=5)]
    path = tmp_path / f"out{suffix}"
    assert write_records(path, records) == 2
    again = read_records(path)
    assert again == records
    assert [len(r.candidates) for r in again] == [2, 5]
    assert again[0].cmp_results == "null"


def test_cmp_results_given_as_an_object_is_stored_as_a_json_string():
    decoded = {"koala-7B-HF,vicuna-13b": "B is better"}
    record = Record.model_validate({**MIXINSTRUCT_LINE, "cmp_results": decoded})
    assert isinstance(record.cmp_results, str) and json.loads(record.cmp_results) == decoded


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MIXINSTRUCT_LINE) + "\n" + '{"id": "x", "output": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        read_records(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    broken = json.loads(json.dumps(MIXINSTRUCT_LINE))
    del broken["candidates"][1]["text"]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MIXINSTRUCT_LINE) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'candidates\.1\.text': Field required"):
        read_records(path)


def test_empty_candidate_list_is_rejected_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**MIXINSTRUCT_LINE, "candidates": []}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'candidates'"):
        read_records(path)


def test_json_array_errors_name_the_line_of_the_element(tmp_path):
    path = tmp_path / "bad.json"
    good = json.dumps(MIXINSTRUCT_LINE, indent=1)
    bad = json.dumps({k: v for k, v in MIXINSTRUCT_LINE.items() if k != "output"}, indent=1)
    path.write_text(f"[\n{good},\n{bad}\n]\n")
    line_of_bad = 2 + good.count("\n") + 1
    with pytest.raises(DataError, match=rf"bad\.json:{line_of_bad}: field 'output'"):
        read_records(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_quality_prefers_bartscore_then_the_configured_fallbacks():
    record = Record.model_validate(MIXINSTRUCT_LINE)
    assert quality(record) == ("bartscore", [-3.1, -4.0])
    assert quality(record, ["bleurt", "rouge1"]) == ("rouge1", [0.28, 0.1])
    with pytest.raises(DataError, match=r"none of \['bleurt'\].*found: \['bartscore', 'bertscore', 'bleu'"):
        quality(record, ["bleurt"])


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
