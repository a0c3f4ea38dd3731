"""Every recipe under pipelines/ runs end to end on the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer import TokenStore
from mixer.cli import main

PIPELINES = sorted(Path(__file__).parent.parent.glob("pipelines/*.toml"))
MIX_SPECS = {"example-mix.toml", "quickstart-mix.toml"}  # plain mix specs, not recipes
RECIPES = [p for p in PIPELINES if p.name not in MIX_SPECS]


def test_all_six_recipes_are_shipped():
    assert {p.stem for p in RECIPES} == {
        "spt-proofpile",
        "spt-musicpile",
        "spt-chempile",
        "pretrain-then-finetune",
        "finetune-with-injection",
        "replay-midtrain",
    }


@pytest.mark.parametrize("pipeline", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_and_hits_its_fractions(tmp_path, pipeline, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", str(pipeline), "--out", str(tmp_path), "--workers", "0", "--no-progress"])
    assert done.value.code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["phases"]
    for name in json.loads((tmp_path / "mix.json").read_text())["source"]:
        TokenStore.open(tmp_path / "stores" / name["name"]).verify()
    if (tmp_path / "mixed").exists():
        exported = TokenStore.open(tmp_path / "mixed")
        exported.verify()
        assert exported.num_documents == report["blocks"]


def test_recipe_stores_read_only_training_files_of_the_datasets_they_name(tmp_path, capsys):
    """Every store names its datasets and reads no held-out split or FineWeb sample/ file,
    although the samples hold them; MusicPile is read unfiltered (its src values are not
    documented)."""
    from mixer.ingest.select import held_out_split
    from mixer.pipeline import load_pipeline

    samples = Path(__file__).parent.parent / "pipelines" / "samples"
    for pipeline in RECIPES:
        for name, table in load_pipeline(str(pipeline)).stores.items():
            assert table["datasets"] and table["include"], (pipeline.stem, name)
            assert "where" not in table, (pipeline.stem, name)
    pipeline = next(p for p in RECIPES if p.stem == "spt-musicpile")
    with pytest.raises(SystemExit):
        main(["run", str(pipeline), "--out", str(tmp_path), "--workers", "0", "--no-progress"])
    for name in ("web", "musicpile"):
        manifest = TokenStore.open(tmp_path / "stores" / name).manifest
        read = [Path(u).relative_to(samples).as_posix() for u in manifest["job"]["inputs"]]
        assert read and not any(held_out_split(r.split("/", 1)[1]) for r in read), read
        assert manifest["filtered"] == 0 and not manifest["job"]["where"]
    web = TokenStore.open(tmp_path / "stores" / "web").manifest["job"]["inputs"]
    assert {Path(u).relative_to(samples).parts[0] for u in web} == {"fineweb", "dclm"}


def test_input_roots_replace_the_samples_and_repeat_for_several_datasets(tmp_path, capsys):
    pipeline = next(p for p in RECIPES if p.stem == "spt-chempile")
    chempile = Path(__file__).parent.parent / "pipelines" / "samples" / "chempile"
    args = ["run", str(pipeline), "--out", str(tmp_path), "--workers", "0", "--no-progress"]
    with pytest.raises(SystemExit) as done:
        main(args + ["--input", f"chempile={chempile / 'chempile-education'}"])
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert "chemistry_stackexchange-raw_data/train-*.parquet" in err and "matches no file" in err
    assert "jablonkagroup/chempile-reasoning" in err
    with pytest.raises(SystemExit) as done:
        main(
            args
            + ["--input", f"chempile={chempile / 'chempile-education'}"]
            + ["--input", f"chempile={chempile / 'chempile-reasoning'}"]
        )
    assert done.value.code == 0, capsys.readouterr().err
    inputs = TokenStore.open(tmp_path / "stores" / "chempile").manifest["job"]["inputs"]
    assert [Path(u).parent.name for u in inputs] == [
        "LibreText_Chemistry-default",
        "chemistry_stackexchange-raw_data",
    ]
    assert all(Path(u).name.startswith("train-") for u in inputs)


def test_relative_out_dir_is_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pipeline = next(p for p in RECIPES if p.stem == "spt-chempile")
    with pytest.raises(SystemExit) as done:
        main(["run", str(pipeline), "--out", "rel-out", "--workers", "0", "--no-progress"])
    assert done.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "rel-out" / "report.json").exists()


def test_unknown_store_override_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", str(RECIPES[0]), "--out", str(tmp_path), "--input", "nope=/x"])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.startswith("mixer: error:") and "nope" in err


@pytest.mark.parametrize(
    "store, message",
    [
        ('on_eror = "skip"', "stores.b: unknown key 'on_eror' (allowed: datasets, inputs, "),
        ('on_error = "ignore"', "stores.b.on_error: 'ignore' is not one of fail, skip"),
        ('where = "x == 1"', "stores.b.where: must be a list of strings"),
        ("", "stores.b.inputs: name at least one file"),
    ],
)
def test_store_options_are_checked_as_job_fields_before_anything_runs(tmp_path, store, message):
    """The store keys are TokenizeJob's fields, checked by it, for every store up front."""
    from mixer.errors import SpecError
    from mixer.pipeline import run_pipeline

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    inputs = 'inputs = ["a.jsonl"]\n' if store else ""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'tokenizer = "t.json"\n[stores.a]\ninputs = ["a.jsonl"]\n'
        f"[stores.b]\n{inputs}{store}\n[mix]\nseq_len = 4\nseed = 0\n"
    )
    with pytest.raises(SpecError) as info:
        run_pipeline(str(recipe), str(tmp_path / "out"))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # store a was not tokenized first


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[output]\nexport = "yes"\n', "output.export: must be true or false, got 'yes'"),
        ("[output]\nplto = true\n", "output: unknown key 'plto' (allowed: export, plot)"),
        ("nmae = 'x'\n", "unknown key 'nmae' (allowed: tokenizer, stores, mix, name, desc"),
        ("name = 3\n", "name must be a string, got 3"),
    ],
)
def test_recipe_keys_are_the_recipe_fields_and_checked(tmp_path, extra, message):
    from mixer.errors import SpecError
    from mixer.pipeline import load_pipeline

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'{extra if not extra.startswith("[") else ""}tokenizer = "t.json"\n'
        '[stores.a]\ninputs = ["a.jsonl"]\n[mix]\nseq_len = 4\n'
        f"{extra if extra.startswith('[') else ''}"
    )
    with pytest.raises(SpecError) as info:
        load_pipeline(str(recipe))
    assert message in str(info.value) and "\n" not in str(info.value)
