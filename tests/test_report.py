from __future__ import annotations

import json

import numpy as np
import pytest
from test_sampler import make_store

from mixer import MixSampler, MixSpec, TokenStore
from mixer.errors import MixerError, SpecError
from mixer.mix.export import export_mix
from mixer.report import format_report, mix_report, plot_mix, run_mix

SPEC = """
seq_len = 8
seed = 7
total_tokens = 8000

[[source]]
name = "web"
store = "web"
weight = 0.9

[[source]]
name = "proofpile"
store = "proofpile"
weight = 0.1
max_repeats = {max_repeats}

[[phase]]
name = "anneal"
blocks = 200
weights = {{ proofpile = 0.5, web = 0.5 }}
"""


@pytest.fixture()
def spec_path(tmp_path):
    make_store(tmp_path / "web", 8 * 2000 + 1, seed=1, docs_per_shard=10)
    make_store(tmp_path / "proofpile", 8 * 10 + 1, seed=2)  # 10 blocks
    path = tmp_path / "mix.toml"
    path.write_text(SPEC.format(max_repeats=50))
    return path


def test_report_counts_blocks_fractions_epochs_and_repeat_starts(spec_path):
    sampler = MixSampler(MixSpec.from_toml(spec_path))
    report = mix_report(sampler)
    assert report["blocks"] == 1000
    main, anneal = report["phases"]
    assert (main["name"], main["blocks"], main["period"]) == ("main", 800, 10)
    assert main["sources"]["proofpile"]["blocks"] == 80
    assert main["sources"]["proofpile"]["achieved"] == pytest.approx(0.1)
    assert anneal["sources"]["proofpile"]["blocks"] == 100
    pp = report["sources"]["proofpile"]
    assert (pp["blocks"], pp["tokens"], pp["epochs"], pp["repeats"]) == (180, 1440, 18.0, 17)
    assert sum(s["blocks"] for s in report["sources"].values()) == 1000
    refs = sampler.locate_many(np.arange(1000))
    mine = np.flatnonzero(refs.source == sampler.source_names.index("proofpile"))
    first_of_epoch = [int(mine[np.argmax(refs.epoch[mine] == e)]) for e in range(1, 18)]
    assert pp["repeat_starts"] == first_of_epoch
    json.dumps(report)  # plain data


def test_formatted_report_shows_epochs_per_source(spec_path):
    text = format_report(mix_report(MixSampler(MixSpec.from_toml(spec_path))))
    assert "proofpile: 18.0 epochs (180 blocks drawn of 10, max_repeats 50)" in text
    assert "(+12 more)" in text
    assert "phase anneal: blocks [800, 1,000)" in text


def test_run_mix_returns_the_report_as_text_or_json(spec_path):
    assert "proofpile: 18.0 epochs" in run_mix(str(spec_path), True, False, None, 0, None, None)
    text = run_mix(str(spec_path), True, True, None, 0, None, None)
    assert json.loads(text)["sources"]["web"]["blocks"] == 820


def test_run_mix_raises_on_a_plan_past_max_repeats(spec_path):
    spec_path.write_text(SPEC.format(max_repeats=10))
    with pytest.raises(SpecError, match="needs 18; the largest fraction of the stream"):
        run_mix(str(spec_path), True, False, None, 0, None, None)


def test_export_writes_each_block_as_one_sequence_of_a_verified_store(spec_path, tmp_path):
    sampler = MixSampler(MixSpec.from_toml(spec_path))
    out = export_mix(sampler, tmp_path / "out", start=95, stop=310, progress=False, shard_blocks=64)
    store = TokenStore.open(out)
    store.verify()
    assert len(store.shards) == 4  # 215 blocks in shards of at most 64
    assert store.num_documents == 215
    for k in range(215):
        assert np.array_equal(store.document(k), sampler[95 + k])
    mix = store.manifest["mix"]
    assert (mix["start"], mix["stop"], mix["sequence_tokens"]) == (95, 310, 9)
    assert MixSpec.from_dict(mix["spec"]) == sampler.spec
    assert store.manifest["tokenizer"] == sampler.stores[0].manifest["tokenizer"]


def test_export_reuses_the_same_export_refuses_another_unless_forced(spec_path, tmp_path):
    sampler = MixSampler(MixSpec.from_toml(spec_path))
    export_mix(sampler, tmp_path / "out", stop=10, progress=False)
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    export_mix(sampler, tmp_path / "out", stop=10, progress=False)  # a rerun: reused
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest
    with pytest.raises(MixerError, match="holds another export; .* force=True to replace it"):
        export_mix(sampler, tmp_path / "out", stop=20, progress=False)
    export_mix(sampler, tmp_path / "out", stop=20, progress=False, force=True)
    store = TokenStore.open(tmp_path / "out")
    store.verify()
    assert store.num_documents == 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "mix-00000.bin",
        "mix-00000.idx",
    ]
    with pytest.raises(MixerError, match=r"^start=5, stop=2000: not a range inside \[0, 1000\]"):
        export_mix(sampler, tmp_path / "other", start=5, stop=2000, progress=False)


def test_run_mix_exports_and_plots(spec_path, tmp_path):
    png = tmp_path / "mix.png"
    # no report unless asked; status lines are logged
    assert run_mix(str(spec_path), False, False, str(tmp_path / "x"), 0, 50, str(png)) == ""
    assert TokenStore.open(tmp_path / "x").num_documents == 50
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(spec_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    sampler = MixSampler(MixSpec.from_toml(spec_path))
    with pytest.raises(MixerError, match=r"^plotting a mix needs matplotlib"):
        plot_mix(sampler, tmp_path / "x.png")


def test_a_plot_is_titled_after_its_spec_or_the_run_that_wrote_its_mix_json(
    spec_path, tmp_path, monkeypatch
):
    import mixer.report as report

    run = tmp_path / "my-run"
    run.mkdir()
    (run / "mix.json").write_text(json.dumps(MixSpec.from_toml(spec_path).to_dict()))
    titles = []
    real = report.plot_mix

    def plot_mix(*args, title=None, **kwargs):
        titles.append(title)
        real(*args, title=title, **kwargs)

    monkeypatch.setattr(report, "plot_mix", plot_mix)
    run_mix(str(run / "mix.json"), False, False, None, 0, None, str(tmp_path / "a.png"))
    run_mix(str(spec_path), False, False, None, 0, None, str(tmp_path / "b.png"))
    assert titles == ["my-run", str(spec_path).rsplit("/", 1)[-1].removesuffix(".toml")]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
