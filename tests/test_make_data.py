"""jobs/make_data.py: each split's facts with the world's knobs beside them, as jobs/evaluate.py --bounds reads them."""

import dataclasses
import shutil

import pytest

from urg_ray.config import ConfigError
from urg_ray.data import read_records, write_records
from urg_ray.synthetic import SyntheticConfig, knobs_file, make_examples, world_from_knobs
from urg_ray.synthetic_facts import write_facts

STUDY_WORLD = "jobs/configs/study-synthetic.yaml"
GIVEN = {"min_facts": 5, "max_facts": 7, "pool_size": 12, "coverage": 0.4, "complementary": True,  # STUDY_WORLD
         "off_topic_rate": 0.1}  # and the --knob over it
SIZES = ["--set", "data.n_train=3", "--set", "data.n_dev=2", "--set", "data.n_test=5", "--set", "data.n_candidates=4"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from make_data import main

    out = tmp_path_factory.mktemp("data")
    assert main([*SIZES, "--synthetic", STUDY_WORLD, "--knob", "off_topic_rate=0.1", "--out", str(out)]) == 0
    return out


def test_each_split_keeps_the_knobs_it_was_made_with_and_evaluate_reads_its_facts_in_that_world(made, tmp_path):
    from evaluate import load_world

    for split in ("train", "dev", "test"):
        written = knobs_file(made / f"{split}.world.yaml")  # every field, so a later default cannot move it
        assert set(written) == {f.name for f in dataclasses.fields(SyntheticConfig)}
        assert SyntheticConfig(**written) == SyntheticConfig(**GIVEN)
    test = str(made / "test.jsonl")
    records = read_records(test)
    world, facts, config = load_world(None, None, test, records)  # no --synthetic: the world file beside the facts
    assert config == SyntheticConfig(**GIVEN) == world_from_knobs(knobs_file(STUDY_WORLD) | {"off_topic_rate": 0.1})
    assert sorted(world) == sorted(facts) == sorted(r.id for r in records)
    same = tmp_path / "same.yaml"  # the same world spelled otherwise (defaults written out, an int for a float)
    same.write_text("n_topics: 40\nerror_scale: 1\npool_size: 12\nmin_facts: 5\nmax_facts: 7\ncoverage: 0.4\n"
                    "complementary: true\noff_topic_rate: 0.1\n")
    assert load_world(None, str(same), test, records)[2] == config


def test_a_synthetic_file_of_another_world_than_the_one_beside_the_facts_is_named_with_it(made, tmp_path, capsys):
    from evaluate import main

    other = tmp_path / "other.yaml"
    other.write_text("pool_size: 10\n")
    assert main(["--test-file", str(made / "test.jsonl"), "--bounds", "--synthetic", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--synthetic {other} and {made / 'test.world.yaml'}" in err and "describe different worlds" in err
    assert "pool_size 10 vs 12" in err and "off_topic_rate" not in err  # only the fields that make the world


def test_a_synthetic_file_of_the_same_world_is_read_even_if_other_knobs_differ(made):
    from evaluate import load_world

    test = str(made / "test.jsonl")  # made with off_topic_rate 0.1; STUDY_WORLD leaves it at 0.05
    config = load_world(None, STUDY_WORLD, test, read_records(test))[2]
    assert (config.pool_size, config.off_topic_rate) == (12, 0.05)


def test_a_stale_world_file_beside_the_facts_is_named_as_such(made, tmp_path, capsys):
    from evaluate import main

    for name in ("test.jsonl", "test.facts.jsonl"):
        shutil.copy(made / name, tmp_path / name)
    (tmp_path / "test.world.yaml").write_text("pool_size: 10\n")  # not the world the facts were made in
    assert main(["--test-file", str(tmp_path / "test.jsonl"), "--bounds"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'test.world.yaml'} beside it is not the world it was made in: remake the data" in err


def test_a_bad_world_file_is_named(made, tmp_path, capsys):
    from evaluate import main

    for name in ("test.jsonl", "test.facts.jsonl"):
        shutil.copy(made / name, tmp_path / name)
    (tmp_path / "test.world.yaml").write_text("coverage: 0\n")
    assert main(["--test-file", str(tmp_path / "test.jsonl"), "--bounds"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'test.world.yaml'}: " in err and "coverage" in err


def test_facts_without_a_world_file_are_read_in_synthetic_else_the_default_world(made, tmp_path):
    from evaluate import load_world

    for name in ("test.jsonl", "test.facts.jsonl"):  # data made before make_data wrote the world
        shutil.copy(made / name, tmp_path / name)
    test = str(tmp_path / "test.jsonl")
    records = read_records(test)
    with pytest.raises(ConfigError, match="is no fact of the synthetic world.*the default world is not the one"):
        load_world(None, None, test, records)
    assert load_world(None, STUDY_WORLD, test, records)[2] == SyntheticConfig(**(GIVEN | {"off_topic_rate": 0.05}))

    examples = make_examples(4, 3, seed=5, id_prefix="synthetic/test")  # the default world, no world file
    write_records(tmp_path / "default.jsonl", [ex.record for ex in examples])
    write_facts(tmp_path / "default.facts.jsonl", examples)
    world, _, config = load_world(None, None, str(tmp_path / "default.jsonl"),
                                  read_records(tmp_path / "default.jsonl"))
    assert config == SyntheticConfig() and [world[ex.record["id"]] for ex in examples] == examples
