"""Which files of a downloaded dataset are read: include/exclude globs and the split rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer import TokenStore
from mixer.cli import main
from mixer.errors import MixerError
from mixer.ingest.inputs import expand_inputs
from mixer.ingest.select import Selection, SelectionReport, compile_glob, held_out_split


def tree(root: Path, rels: list[str]) -> Path:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"text": f"document {rel}"}) + "\n")
    return root


def rels(root: Path, files) -> list[str]:
    return sorted(Path(f.url).relative_to(root).as_posix() for f in files)


@pytest.mark.parametrize(
    "pattern, path, hit",
    [
        ("data/*/*.parquet", "data/CC-MAIN-2024-10/000_00000.parquet", True),
        ("data/*/*.parquet", "data/x/y/000_00000.parquet", False),  # * stays in one folder
        ("data/**/*.parquet", "data/x/y/000_00000.parquet", True),
        ("data/**/*.parquet", "data/000_00000.parquet", True),  # **/ also matches no folder
        ("**", "a/b/c.jsonl", True),
        ("train-?????-of-*.parquet", "cfg/train-00001-of-00002.parquet", True),  # basename
        ("cfg/train-*.parquet", "other/cfg/train-00001-of-00002.parquet", False),  # anchored
        ("shard_[0-9]*.zst", "shard_7.zst", True),
        ("shard_[!0-9]*.zst", "shard_7.zst", False),
        ("a+b.jsonl", "a+b.jsonl", True),  # regex metacharacters are literal
        ("a.jsonl", "aXjsonl", False),
    ],
)
def test_glob_semantics(pattern, path, hit):
    from mixer.ingest.select import Pattern

    assert Pattern.parse(pattern, "--include").matches(path) is hit
    assert compile_glob("data/**/x").match("data/x") is not None


@pytest.mark.parametrize(
    "rel, split",
    [
        ("train/proofpile_train_0.jsonl.gz", None),
        ("dev/proofpile_dev.jsonl.gz", "dev"),
        ("arxiv/validation/arXiv_000.jsonl.zst", "validation"),
        ("open-web-math/Test/test.jsonl.zst", "Test"),
        ("sample/10BT/000_00000.parquet", "sample"),
        ("LibreText_Chemistry-default/val-00000-of-00001.parquet", "val"),
        ("LibreText_Chemistry-default/test-00000-of-00001.parquet", "test"),
        ("data/validation.jsonl", "validation"),
        ("data/testimonials.jsonl", None),  # a word that merely starts like a split
        ("samples/latest.jsonl", None),
        ("developer/notes.jsonl", None),
    ],
)
def test_held_out_split_names(rel, split):
    assert held_out_split(rel) == split


def test_a_dataset_root_reads_its_training_split_and_says_what_it_skipped(tmp_path):
    root = tree(
        tmp_path / "pp2",
        [
            "arxiv/train/arXiv_000.jsonl",
            "arxiv/validation/arXiv_000.jsonl",
            "arxiv/test/arXiv_000.jsonl",
            "algebraic-stack/train/github-lean-train-0000.jsonl",
            "algebraic-stack/train/python0000.jsonl",
        ],
    )
    report = SelectionReport()
    files = expand_inputs([str(root)], report=report)
    assert rels(root, files) == [
        "algebraic-stack/train/github-lean-train-0000.jsonl",
        "algebraic-stack/train/python0000.jsonl",
        "arxiv/train/arXiv_000.jsonl",
    ]
    assert report.held_out == {"validation": 1, "test": 1}
    assert "all_splits=True" in report.held_out_line()
    everything = expand_inputs([str(root)], selection=Selection(all_splits=True))
    assert len(everything) == 5


def test_a_split_named_in_the_input_or_an_include_pattern_is_read(tmp_path):
    root = tree(tmp_path / "pp2", ["arxiv/train/a.jsonl", "arxiv/validation/a.jsonl"])
    named = expand_inputs([str(root / "arxiv" / "validation")])
    assert rels(root, named) == ["arxiv/validation/a.jsonl"]
    globbed = expand_inputs([f"{root}/*/validation/*.jsonl"])
    assert rels(root, globbed) == ["arxiv/validation/a.jsonl"]
    included = expand_inputs([str(root)], selection=Selection(include=("*/validation/*",)))
    assert rels(root, included) == ["arxiv/validation/a.jsonl"]
    # a pattern that does not name the split does not unlock it
    wild = expand_inputs([str(root)], selection=Selection(include=("arxiv/*/a.jsonl",)))
    assert rels(root, wild) == ["arxiv/train/a.jsonl"]


def test_include_and_exclude_are_relative_to_each_of_several_roots(tmp_path):
    fineweb = tree(
        tmp_path / "fineweb",
        ["data/CC-MAIN-2024-10/000_00000.jsonl", "sample/10BT/000_00000.jsonl", "README.md"],
    )
    dclm = tree(
        tmp_path / "dclm",
        ["global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl"],
    )
    selection = Selection(
        include=("data/CC-MAIN-*/*.jsonl", "global-shard_*/local-shard_*/*.jsonl", "*/10BT/*"),
        exclude=("sample/**",),
    )
    with pytest.raises(MixerError, match=r"^include='\*/10BT/\*' matches no file"):
        expand_inputs([str(fineweb), str(dclm)], selection=selection)  # excluded after all
    selection = Selection(include=selection.include[:2], exclude=selection.exclude)
    files = expand_inputs([str(fineweb), str(dclm)], selection=selection)
    assert [Path(f.url).parent.name for f in files] == ["CC-MAIN-2024-10", "local-shard_0_of_10"]
    assert [f.input for f in files] == [str(fineweb), str(dclm)]


def test_empty_selections_are_errors_naming_the_pattern_or_root(tmp_path):
    fineweb = tree(tmp_path / "fineweb", ["data/CC-MAIN-2024-10/000_00000.jsonl"])
    missing = Selection(include=("data/*/*.jsonl", "global-shard_*/**/*.jsonl"))
    with pytest.raises(MixerError, match=r"^include='global-shard_\*/\*\*/\*.jsonl' matches no"):
        expand_inputs([str(fineweb)], selection=missing)
    other = tree(tmp_path / "other", ["x/y.jsonl"])
    with pytest.raises(MixerError, match=r"no file of '.*other' is selected.*x/y.jsonl"):
        expand_inputs([str(fineweb), str(other)], selection=Selection(include=("data/**",)))
    held = tree(tmp_path / "held", ["test/a.jsonl", "validation/b.jsonl"])
    with pytest.raises(MixerError, match="held-out split or sample folders.*all_splits=True"):
        expand_inputs([str(held)])
    for bad in ("/abs/*.jsonl", "../up/*.jsonl", " "):
        with pytest.raises(MixerError, match="^include="):
            Selection(include=(bad,))
    with pytest.raises(MixerError, match="list of glob patterns"):
        Selection(include="data/*")  # type: ignore[arg-type]


def test_dataset_cards_and_hidden_folders_of_a_download_are_not_corpus(tmp_path):
    root = tree(tmp_path / "ds", ["data/a.jsonl", ".cache/huggingface/x.jsonl"])
    (root / "README.md").write_text("---\nlicense: cc\n---\n# Dataset card\n")
    (root / "LICENSE.txt").write_text("MIT")
    assert rels(root, expand_inputs([str(root)])) == ["data/a.jsonl"]


def test_an_explicit_file_is_always_read(tmp_path):
    root = tree(tmp_path / "ds", ["test/a.jsonl"])
    files = expand_inputs(
        [str(root / "test" / "a.jsonl")], selection=Selection(include=("nothing/*",))
    )
    assert rels(root, files) == ["test/a.jsonl"]


def test_tokenize_cli_include_exclude_and_all_splits(tmp_path, tokenizer_path, capsys):
    root = tree(
        tmp_path / "ds",
        ["train/a.jsonl", "train/b.jsonl", "test/c.jsonl", "train/skip-me.jsonl"],
    )
    args = ["tokenize", str(root), "-t", tokenizer_path, "--workers", "0", "--no-progress"]
    with pytest.raises(SystemExit) as done:
        main([*args, "-o", str(tmp_path / "s1"), "--exclude", "skip-*"])
    assert done.value.code in (0, None), capsys.readouterr().err
    assert "skipped 1 file of held-out splits or samples (test/)" in capsys.readouterr().err
    inputs = TokenStore.open(tmp_path / "s1").manifest["job"]["inputs"]
    assert [Path(u).name for u in inputs] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "s2"), "--all-splits", "--include", "t*/[ac].jsonl"])
    inputs = TokenStore.open(tmp_path / "s2").manifest["job"]["inputs"]
    assert [Path(u).relative_to(root).as_posix() for u in inputs] == [
        "test/c.jsonl",
        "train/a.jsonl",
    ]
