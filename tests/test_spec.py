from __future__ import annotations

import pytest

from mixer.errors import SpecError
from mixer.mix.spec import BASE_PHASE, MixSpec, PhaseSpec, SourceSpec

ISSUE_EXAMPLE = """
seq_len = 2048
seed = 1234
total_tokens = 10_000_000_000

[[source]]
name = "web"
store = "stores/web"
weight = 0.98

[[source]]
name = "proofpile"
store = "stores/proofpile"
weight = 0.02
max_repeats = 50

[[phase]]
name = "finetune"
tokens = 1_000_000_000
weights = { proofpile = 0.99, web = 0.01 }
"""


def spec_dict(**overrides):
    data = {
        "seq_len": 4,
        "seed": 0,
        "total_tokens": 400,
        "source": [
            {"name": "a", "store": "/stores/a", "weight": 0.75},
            {"name": "b", "store": "/stores/b", "weight": 0.25},
        ],
    }
    data.update(overrides)
    return data


def spec_error(data) -> str:
    with pytest.raises(SpecError) as info:
        MixSpec.from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_issue_example_runs_the_base_mix_then_the_listed_phase(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(ISSUE_EXAMPLE)
    spec = MixSpec.from_toml(path)
    assert spec.num_blocks == 10_000_000_000 // 2048
    main, finetune = spec.plan
    assert (main.name, main.start) == (BASE_PHASE, 0)
    assert main.blocks == 9_000_000_000 // 2048
    assert finetune.start == main.blocks
    assert finetune.start + finetune.blocks == spec.num_blocks
    assert dict(main.weights) == {"web": 0.98, "proofpile": 0.02}
    assert dict(finetune.weights) == {"web": 0.01, "proofpile": 0.99}
    assert spec.sources[1].max_repeats == 50


def test_relative_store_paths_resolve_against_the_toml_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "mix.toml"
    path.write_text(
        "seq_len = 4\nseed = 1\ntotal_tokens = 40\n"
        '[[source]]\nname = "a"\nstore = "stores/a"\nweight = 0.5\n'
        '[[source]]\nname = "b"\nstore = "s3://bucket/b"\nweight = 0.25\n'
        '[[source]]\nname = "c"\nstore = "/abs/c"\nweight = 0.25\n'
    )
    stores = [s.store for s in MixSpec.from_toml(path).sources]
    assert stores == [str(tmp_path / "sub" / "stores" / "a"), "s3://bucket/b", "/abs/c"]


def test_steps_and_global_batch_size_define_the_length():
    spec = MixSpec.from_dict(spec_dict(total_tokens=None, steps=10, global_batch_size=8))
    assert spec.num_blocks == 80
    assert spec.run_tokens == 80 * 4


def test_phase_boundaries_tile_the_run_when_tokens_are_not_block_multiples():
    data = spec_dict(
        seq_len=3,
        total_tokens=10,
        phase=[
            {"name": "p", "tokens": 5, "weights": {"a": 1.0}},
            {"name": "q", "tokens": 5, "weights": {"b": 1.0}},
        ],
    )
    spec = MixSpec.from_dict(data)
    assert [(p.name, p.start, p.blocks) for p in spec.plan] == [("p", 0, 1), ("q", 1, 2)]
    assert dict(spec.plan[0].weights) == {"a": 1.0, "b": 0.0}  # missing sources weigh 0


def test_phases_in_blocks_and_omitted_source_weights_when_phases_cover_the_run():
    data = spec_dict(phase=[{"name": "only", "blocks": 100, "weights": {"a": 0.5, "b": 0.5}}])
    for source in data["source"]:
        del source["weight"]
    spec = MixSpec.from_dict(data)
    assert [(p.name, p.start, p.blocks) for p in spec.plan] == [("only", 0, 100)]


def test_to_dict_round_trips():
    data = spec_dict(phase=[{"name": "late", "tokens": 100, "weights": {"b": 1.0}}])
    data["source"][1]["max_repeats"] = 3
    spec = MixSpec.from_dict(data)
    assert MixSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == data


def test_specs_are_constructible_in_python():
    spec = MixSpec(
        seq_len=8,
        seed=3,
        total_tokens=800,
        sources=(SourceSpec("a", "/a", 0.5), SourceSpec("b", "/b", 0.5)),
        phases=(PhaseSpec("end", {"a": 1.0}, blocks=10),),
    )
    assert [(p.name, p.blocks) for p in spec.plan] == [(BASE_PHASE, 90), ("end", 10)]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"seq_len": 0}, "seq_len: must be a positive integer, got 0"),
        ({"seq_len": 2.5}, "seq_len: must be a positive integer, got 2.5"),
        ({"seed": "x"}, "seed: must be an integer, got 'x'"),
        ({"total_tokens": 3}, "total_tokens: 3 is less than one block of seq_len 4"),
        ({"steps": 3}, "total_tokens: give total_tokens, or steps with global_batch_size"),
        (
            {"total_tokens": None},
            "total_tokens: give total_tokens, or steps with global_batch_size",
        ),
        ({"source": []}, "source: a mix needs at least one [[source]]"),
        ({"wieght": 1}, "spec: unknown key 'wieght'"),
    ],
)
def test_top_level_errors_name_the_key_and_value(overrides, expected):
    assert expected in spec_error(spec_dict(**overrides))


def test_weights_not_summing_to_one_are_rejected_with_their_sum():
    data = spec_dict()
    data["source"][1]["weight"] = 0.2
    assert spec_error(data) == "source.weight: weights sum to 0.95, not 1 (within 1e-09)"


def test_weights_within_1e_9_of_one_are_accepted():
    data = spec_dict()
    data["source"][1]["weight"] = 0.25 + 5e-10
    MixSpec.from_dict(data)


def test_negative_weight_is_rejected():
    data = spec_dict()
    data["source"][0]["weight"] = -0.25
    assert spec_error(data) == "source 'a'.weight: weight must be a number >= 0, got -0.25"
    data["source"][0]["weight"] = "0.75"
    assert spec_error(data) == "source 'a'.weight: weight must be a number >= 0, got '0.75'"


def test_unknown_source_in_a_phase_is_rejected():
    data = spec_dict(phase=[{"name": "p", "tokens": 40, "weights": {"c": 1.0}}])
    assert spec_error(data) == "phase 'p'.weights: unknown source 'c' (sources: a, b)"


def test_unknown_keys_in_sources_and_phases_are_rejected():
    data = spec_dict()
    data["source"][0]["wieght"] = data["source"][0].pop("weight")
    assert "source[0]: unknown key 'wieght'" in spec_error(data)
    data = spec_dict(phase=[{"name": "p", "token": 40, "weights": {"a": 1.0}}])
    assert "phase[0]: unknown key 'token'" in spec_error(data)


def test_a_spec_using_every_key_round_trips_through_to_dict():
    """The TOML keys are the dataclasses' fields (plus normalize), so every one is accepted,
    and what `to_dict` writes reads back as the same spec."""
    data = {
        "seq_len": 4,
        "seed": 3,
        "steps": 10,
        "global_batch_size": 10,
        "skip_steps": [[1, 2]],
        "normalize": True,
        "source": [
            {"name": "a", "store": "/a", "weight": 3, "max_repeats": 2},
            {"name": "b", "store": "/b", "weight": 1},
        ],
        "phase": [
            {"name": "p", "blocks": 10, "weights": {"a": 1, "b": 1}},
            {"name": "q", "start_step": 5, "weights": {"a": 1}},
            {"name": "r", "tokens": 40, "weights": {"b": 1}},
            {"name": "s", "start_tokens": 300, "weights": {"a": 1}},
        ],
    }
    spec = MixSpec.from_dict(data)
    assert MixSpec.from_dict(spec.to_dict()) == spec
    assert [p.name for p in spec.plan] == ["main", "p", "q", "r", "s"]


def test_phases_longer_than_the_run_are_rejected():
    data = spec_dict(phase=[{"name": "p", "tokens": 401, "weights": {"a": 1.0}}])
    assert spec_error(data) == "phase: phases need 401 tokens but the run has 400"


def test_base_phase_needs_source_weights():
    data = spec_dict(phase=[{"name": "p", "tokens": 100, "weights": {"a": 1.0}}])
    del data["source"][1]["weight"]
    assert spec_error(data).startswith("source 'b'.weight: missing")


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ({"name": "p", "weights": {"a": 1.0}}, "phase 'p': give exactly one of tokens or blocks"),
        ({"name": "p", "tokens": 1, "blocks": 1, "weights": {"a": 1.0}}, "exactly one of"),
        ({"name": "p", "tokens": -4, "weights": {"a": 1.0}}, "phase 'p'.tokens: must be a"),
        ({"name": "p", "tokens": 8, "weights": {"a": 0.5}}, "phase 'p'.weights: weights sum"),
        ({"name": "main", "tokens": 8, "weights": {"a": 1.0}}, "phase.name: 'main' is used twice"),
    ],
)
def test_phase_errors_name_the_phase(phase, expected):
    assert expected in spec_error(spec_dict(phase=[phase]))


def test_a_phase_that_gets_no_whole_block_is_rejected():
    tiny = {"name": "p", "tokens": 2, "weights": {"a": 1.0}}
    data = spec_dict(phase=[tiny, {**tiny, "name": "q"}])
    assert spec_error(data) == (
        "phase 'p'.tokens: 2 tokens (from token 396) is less than one block of seq_len 4"
    )


def test_duplicate_source_names_are_rejected():
    data = spec_dict()
    data["source"][1]["name"] = "a"
    assert spec_error(data) == "source.name: 'a' is used by more than one source"


def test_max_repeats_must_be_a_positive_integer():
    data = spec_dict()
    data["source"][0]["max_repeats"] = 0
    assert spec_error(data) == "source 'a'.max_repeats: must be a positive integer, got 0"


def test_invalid_toml_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("seq_len = = 3\n")
    with pytest.raises(SpecError, match="invalid TOML") as info:
        MixSpec.from_toml(path)
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="not found"):
        MixSpec.from_toml(tmp_path / "missing.toml")
