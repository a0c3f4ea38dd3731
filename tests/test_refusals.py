"""Hostile or mistaken inputs end in one line (`mixer: error: ...`, exit 1), never a traceback,
and never in a mix that quietly differs from what the spec says (issue 14)."""

from __future__ import annotations

import os
import shutil
import unicodedata

import pytest

from mixer.cli import main
from mixer.errors import SpecError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec, SourceSpec
from mixer.store.writer import write_store


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mixer: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def stores(tmp_path):
    for name, first in (("a", 0), ("b", 500)):
        write_store(tmp_path / name, [list(range(first, first + 100))] * 4, vocab_size=1000)
    return tmp_path


def spec_file(root, body: str, sources=(("a", "a"), ("b", "b"))) -> str:
    lines = [body]
    for name, store in sources:
        lines += ["[[source]]", f'name = "{name}"', f'store = "{store}"', "weight = 0.5"]
    path = root / "mix.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_5000_digit_seed_is_one_line(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\ntotal_tokens = 100\nseed = {'9' * 5000}")
    assert "invalid spec" in one_line_error(["mix", path], capsys)
    with pytest.raises(SpecError, match="seed: must fit in 64 bits"):
        MixSpec(seq_len=4, seed=10**300, total_tokens=100, sources=(SourceSpec("a", "x", 1.0),))


def test_plans_past_2_63_blocks_are_one_line(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\nseed = 1\ntotal_tokens = {2**63 * 4 + 8}")
    assert "fewer than 2**62" in one_line_error(["mix", path, "--json"], capsys)


def test_the_largest_plan_reports(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\nseed = 1\ntotal_tokens = {(2**62 - 1) * 4}")
    with pytest.raises(SystemExit) as exit_:
        main(["mix", path, "--json"])
    assert exit_.value.code == 0
    assert '"blocks": 4611686018427387903' in capsys.readouterr().out


def test_source_names_differing_only_in_unicode_normalization_are_refused(stores, capsys):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    path = spec_file(stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100", ((nfc, "a"), (nfd, "b")))
    assert "differ only in Unicode normalization" in one_line_error(["mix", path], capsys)


@pytest.mark.parametrize(
    "second",
    ["a", "./a", "../{dir}/a", "link", "copy"],
    ids=["same", "dot-spelling", "parent-spelling", "symlinked-dir", "copied"],
)
def test_one_store_under_two_sources_is_refused(stores, capsys, second):
    os.symlink(stores / "a", stores / "link")
    shutil.copytree(stores / "a", stores / "copy")
    second = second.format(dir=stores.name)
    path = spec_file(
        stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100", (("x", "a"), ("y", second))
    )
    err = one_line_error(["mix", path], capsys)
    assert "source 'y'.store: the same store as source 'x'" in err
    MixSampler(MixSpec.from_toml(spec_file(stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100")))
