import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from urg_ray.data import DataError, Record, quality, read_records, write_records

from conftest import make_record

ROOT = Path(__file__).resolve().parents[1]

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


# (instruction, input) -> the question every entry point must produce, written out by hand
QUESTIONS = [
    ("", "What is a skeptic?", "What is a skeptic?"),
    ("Name a colour.", "", "Name a colour."),
    ("Translate to French:", "good morning", "Translate to French:\ngood morning"),
    ("", "", ""),
    ("Answer:", " ", "Answer:\n "),  # a blank input is not empty: it is kept
    ("Sum up.\u2028Be brief.", "one\u2029two\u0085three", "Sum up.\u2028Be brief.\none\u2029two\u0085three"),
]


def test_every_entry_point_joins_the_question_the_same_way(monkeypatch):
    import urg_ray.synthetic
    from urg_ray.benchmarking import make_inputs
    from urg_ray.data import join_question
    from urg_ray.generate import Prompt
    from urg_ray.train_llms import question_of

    rows = [{"id": str(i), "instruction": ins, "input": inp, "output": "", "candidates": [{"model": "m", "text": "a"}]}
            for i, (ins, inp, _) in enumerate(QUESTIONS)]
    monkeypatch.setattr(urg_ray.synthetic, "make_dataset", lambda *args, **kwargs: rows)
    benchmark_questions, _ = make_inputs(len(rows), 1, seed=0)
    for row, (ins, inp, expected), benchmark_question in zip(rows, QUESTIONS, benchmark_questions):
        assert join_question(ins, inp) == expected
        assert Record.model_validate(row).question == expected
        assert Prompt(row["id"], ins, inp).question == expected
        assert question_of(row) == expected
        assert benchmark_question == expected


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


def test_reading_and_writing_records_does_not_import_torch():
    """Jobs that only read, check or write records (score, make_data, the pipeline's data stage)
    start without torch: the tensors are urg_ray.collate's."""
    script = "import sys, urg_ray.data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---- Unicode, streaming, bad bytes and non-standard numbers (issue 13) -------------------------
import random  # noqa: E402

import urg_ray.data as data_module  # noqa: E402
from urg_ray.data import iter_json  # noqa: E402

# Every character str.splitlines() splits on, plus what JSON must escape or may leave raw
LINE_BREAKERS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
TRICKY = LINE_BREAKERS + ["", '"', "\\", "\\u2028", "\x00", "\x1f", "\ufeff", "😀", "𝄞", "\U0010ffff", "é",
                          "NaN", "Infinity", "[", "]", ",", "{", " "]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.7:
            parts.append(rng.choice(TRICKY))
        else:  # any code point but a surrogate
            parts.append(chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])))
    return "".join(parts)


def random_record(rng: random.Random, i: int) -> Record:
    def score() -> float:
        return rng.choice([0.0, -0.0, 1e308, -5e-324, rng.uniform(-50, 50), float(rng.randint(-9, 9))])

    candidates = []
    for _ in range(rng.randint(1, 4)):
        cand = {"model": random_text(rng), "text": random_text(rng), "decoding_method": random_text(rng),
                "scores": {random_text(rng): score() for _ in range(rng.randint(0, 3))}}
        if rng.random() < 0.3:
            cand["error"] = random_text(rng)
        candidates.append(cand)
    return Record.model_validate({"id": f"{i}{random_text(rng)}", "instruction": random_text(rng),
                                  "input": random_text(rng), "output": random_text(rng),
                                  "candidates": candidates, "cmp_results": random_text(rng)})


@pytest.mark.parametrize("suffix, chunk", [(".jsonl", 1 << 20), (".json", 1 << 20), (".json", 7)])
def test_records_with_arbitrary_unicode_round_trip(tmp_path, monkeypatch, suffix, chunk):
    monkeypatch.setattr(data_module, "_CHUNK", chunk)  # 7 bytes: every value spans many chunks
    rng = random.Random(13)
    records = [random_record(rng, i) for i in range(300)]
    assert any(b in r.candidates[0].text for r in records for b in LINE_BREAKERS)  # the generator covers them
    path = tmp_path / f"r{suffix}"
    assert write_records(path, records) == 300
    again = read_records(path)
    assert again == records
    assert [r.model_dump() for r in again] == json.loads(path.read_text(encoding="utf-8"))  if suffix == ".json" \
        else [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def test_a_line_separator_in_a_candidate_reads_back_the_reported_way(tmp_path):
    record = make_record(0, n=1)
    record.candidates[0].text = "a\u2028b\x85c\x0cd\x1ce"
    path = tmp_path / "c.jsonl"
    other = make_record(1, n=1)
    write_records(path, [record, other])
    assert path.read_bytes().count(b"\n") == 2  # one line per record, whatever the text holds
    assert read_records(path) == [record, other] and "\u2028" in record.candidates[0].text


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_json_array_values_and_lines_are_those_of_the_whole_file(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(data_module, "_CHUNK", chunk)
    values = [1234567, -0.25e-3, "x\ny", [], {}, {"a": [1, {"b": "😀"}]}, True, None, 10**30, "é\u2028"]
    text = "\ufeff  [\n" + ",\n\n".join(json.dumps(v, indent=1, ensure_ascii=False) for v in values) + "\n ]\n"
    path = tmp_path / "v.json"
    path.write_text(text, encoding="utf-8")
    lines, line = [], 2
    for v in values:
        lines.append(line)
        line += json.dumps(v, indent=1).count("\n") + 2
    assert list(iter_json(path)) == list(zip(lines, json.loads(text[1:])))


def test_bom_prefixed_files_are_read_by_their_format(tmp_path):
    line = json.dumps(MIXINSTRUCT_LINE, ensure_ascii=False)
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + f"[{line},\n{line}]".encode())
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + f"{line}\n{line}\n".encode())
    assert len(read_records(tmp_path / "a.json")) == 2 and len(read_records(tmp_path / "b.jsonl")) == 2


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_wrong_encoding_names_file_and_line(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(data_module, "_CHUNK", chunk)
    latin1 = {**MIXINSTRUCT_LINE, "output": "café"}
    good = json.dumps(MIXINSTRUCT_LINE)
    (tmp_path / "a.jsonl").write_bytes(
        (good + "\n\n" + json.dumps(latin1, ensure_ascii=False) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.jsonl:3: not UTF-8 text \(invalid continuation byte\)"):
        read_records(tmp_path / "a.jsonl")
    element = json.dumps(latin1, indent=1, ensure_ascii=False)
    line_of_cafe = 3 + good.count("\n") + next(i for i, t in enumerate(element.split("\n")) if "caf" in t)
    (tmp_path / "a.json").write_bytes(f"[\n{good},\n{element}\n]".encode("latin-1"))
    with pytest.raises(DataError, match=rf"a\.json:{line_of_cafe}: not UTF-8 text"):
        read_records(tmp_path / "a.json")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_nan_and_infinite_scores_are_rejected_naming_the_field(tmp_path, literal, suffix):
    good = json.dumps(MIXINSTRUCT_LINE)
    bad = good.replace('"bleu": 1.2', f'"bleu": {literal}')
    path = tmp_path / f"bad{suffix}"
    path.write_text(f"{good}\n{bad}\n" if suffix == ".jsonl" else f"[{good},\n{bad}]")
    with pytest.raises(DataError, match=rf"bad{suffix}:2: field 'candidates\.1\.scores\.bleu': {literal} is not"):
        read_records(path)


def test_nan_is_never_written(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, [make_record(0)])
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"record 2: field 'candidates\.0\.scores\.bleu': Input should be a finite"):
        write_records(path, [make_record(0), {**make_record(1).model_dump(), "candidates": [
            {"model": "m", "text": "t", "scores": {"bleu": float("nan")}}]}])
    nan_extra = make_record(1)
    nan_extra.candidates[0].__pydantic_extra__["logprob"] = float("-inf")  # an extra field is not typed
    with pytest.raises(DataError,
                       match=r"record 1 \(id 'r1'\): field 'candidates\.0\.logprob': -Infinity is not a number"):
        write_records(path, [nan_extra])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_lone_surrogates_are_rejected_naming_the_field(tmp_path):
    path = tmp_path / "s.jsonl"
    pair = json.dumps(MIXINSTRUCT_LINE).replace("A doubter.", "\\ud83d\\ude00")  # a valid pair: one astral char
    lone = json.dumps(MIXINSTRUCT_LINE).replace("No idea.", "x\\udc00")
    path.write_text(pair + "\n" + lone + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'candidates\.1\.text': a lone surrogate"):
        read_records(path)
    path.write_text(pair + "\n")
    assert read_records(path)[0].candidates[0].text == "😀"
    record = make_record(0)
    record.candidates[0].text = "\ud800"
    with pytest.raises(DataError, match=r"field 'candidates\.0\.text': a lone surrogate"):
        write_records(tmp_path / "t.jsonl", [record])


@pytest.mark.parametrize("body, line, problem", [
    ('[\n{"a": 1}\n{"b": 2}\n]', 3, r"expected ',' or '\]', found '\{'"),
    ('[\n{"a": 1},\n]', 3, r"expected a value, found '\]'"),
    ('[\n{"a": 1},\n', 3, "expected a value, found the end of the file"),
    ('[\n{"a": 1}\n]\n{"b": 2}', 4, "extra data after the array"),
    ('[\n{"a": 1},\n{"b": \n\n}]', 5, "Expecting value"),
    ('[\n{"a": 1},\n\n{"b": "unterminated}]', 4, "Unterminated string"),
])
def test_malformed_json_arrays_name_the_line(tmp_path, body, line, problem):
    (tmp_path / "a.json").write_text(body)
    with pytest.raises(DataError, match=rf"a\.json:{line}: invalid JSON.*{problem}"):
        list(iter_json(tmp_path / "a.json"))


def test_bad_jsonl_lines_can_be_collected_instead_of_raised(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'{"a": 1}\n{oops\n{"b": "\xff"}\n{"c": NaN}\n{"d": 4}\n')
    problems: list[str] = []
    assert list(iter_json(tmp_path / "p.jsonl", problems)) == [(1, {"a": 1}), (5, {"d": 4})]
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["2", "3", "4"]
