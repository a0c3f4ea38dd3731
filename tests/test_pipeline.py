"""Every recipe under pipelines/ runs end to end on the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer.cli import main
from mixer.store.reader import TokenStore

PIPELINES = sorted(Path(__file__).parent.parent.glob("pipelines/*.toml"))
RECIPES = [p for p in PIPELINES if p.name != "example-mix.toml"]


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


def test_musicpile_recipe_keeps_only_music_sources(tmp_path, capsys):
    pipeline = next(p for p in RECIPES if p.stem == "spt-musicpile")
    with pytest.raises(SystemExit):
        main(["run", str(pipeline), "--out", str(tmp_path), "--workers", "0", "--no-progress"])
    manifest = TokenStore.open(tmp_path / "stores" / "musicpile").manifest
    assert manifest["filtered"] > 0
    assert manifest["job"]["where"]


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
