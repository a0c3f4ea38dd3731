"""The CLI as a new user meets it (issue #15): examples that run, reruns, one-line errors,
conventions (--version, python -m mixer, exit codes, size suffixes), install hints."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixer.cli import main
from mixer.errors import MixerError
from mixer.extras import DISTRIBUTION
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.store.reader import TokenStore
from mixer.units import human_count, parse_count

REPO = Path(__file__).resolve().parent.parent
VERBS = ("tokenize", "peek", "inspect", "verify", "run", "mix", "explain", "plan")
# Examples that need what a test machine has not got: S3 credentials, a Ray cluster, a command
# placeholder, a training run's checkpoint. Each is still shown to users; this names why not run.
NOT_RUNNABLE = (
    "s3://",
    "--ray-address",
    "COMMAND",
    "ckpt/loader_state.json",
    "$D/",
    "checkpoint-1500/",
)


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `mixer ARGV` in this process; (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh clone's layout: pipelines/ and README.md copied, working directory at its root."""
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def help_examples(verb: str, capsys) -> list[str]:
    code, out, _ = cli([verb, "--help"], capsys)
    assert code == 0
    lines = out.split("Examples:", 1)[1].splitlines()
    return [line.strip() for line in lines if line.strip().startswith("mixer ")]


def readme_commands(section: str | None = None) -> list[str]:
    """`mixer ...` lines of the README's bash blocks (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "mixer":
                commands.append(shlex.join(words))
    return commands


def runnable(command: str) -> bool:
    return not any(marker in command for marker in NOT_RUNNABLE)


def test_every_help_and_readme_example_runs_as_written_and_again(workspace, capsys):
    quick = readme_commands("Quick start")
    assert len(quick) >= 5
    commands = quick + [c for verb in VERBS for c in help_examples(verb, capsys)]
    commands += [c for c in readme_commands() if c not in commands]
    skipped = [c for c in commands if not runnable(c)]
    assert len(skipped) <= 9
    assert len(commands) - len(skipped) >= 18
    for attempt in ("first run", "rerun"):
        for command in filter(runnable, commands):
            code, _, err = cli(shlex.split(command)[1:], capsys)
            assert code == 0, f"{attempt}: {command}\n{err}"
    assert TokenStore.open("out/mixed").num_documents == 1000
    assert Path("out/mix.png").read_bytes()[:4] == b"\x89PNG"


def test_mix_json_written_by_run_is_a_spec_mixer_mix_reads(workspace, capsys):
    assert cli(["run", "pipelines/spt-proofpile.toml", "--out", "o"], capsys)[0] == 0
    code, out, err = cli(["mix", "o/mix.json", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == json.loads(Path("o/report.json").read_text())


def test_rerun_reuses_an_identical_export_and_force_rewrites_a_changed_one(workspace, capsys):
    argv = ["run", "pipelines/spt-proofpile.toml", "--out", "o"]
    assert cli(argv, capsys)[0] == 0
    manifest = Path("o/mixed/manifest.json").read_bytes()
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    assert "reused the export of 3,906 blocks" in err
    assert "already complete" in err  # the stores too
    assert Path("o/mixed/manifest.json").read_bytes() == manifest
    recipe = Path("pipelines/spt-proofpile.toml")
    recipe.write_text(recipe.read_text().replace("total_tokens = 2_000_000", 'total_tokens = "1M"'))
    code, _, err = cli(argv, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1:] == [
        f"mixer: error: {Path('o/mixed').resolve()}: holds another export; choose a new "
        "directory, or --force to replace it"
    ]
    assert cli([*argv, "--force"], capsys)[0] == 0
    store = TokenStore.open("o/mixed")
    store.verify()
    assert store.num_documents == 1_000_000 // 512


def test_a_file_where_a_store_is_expected_is_one_line(workspace, capsys):
    sample = "pipelines/samples/dclm/global-shard_01_of_10"
    jsonl = str(next(Path(sample).rglob("*.jsonl*")))
    for argv in (["inspect", jsonl], ["verify", jsonl]):
        code, out, err = cli(argv, capsys)
        assert (code, out) == (1, "")
        assert (
            err == f"mixer: error: {jsonl}: is a file, not a token store (a store is a "
            "directory holding manifest.json; mixer tokenize makes one)\n"
        )
    spec = Path("spec.toml")
    spec.write_text(
        f'seq_len = 8\ntotal_tokens = 80\n[[source]]\nname = "a"\nstore = "{jsonl}"\nweight = 1.0\n'
    )
    code, _, err = cli(["mix", str(spec)], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "is a file, not a token store" in err


def test_mix_spec_given_to_run_and_recipe_given_to_mix_name_the_right_verb(workspace, capsys):
    code, _, err = cli(["run", "pipelines/quickstart-mix.toml", "--out", "o"], capsys)
    assert code == 1
    assert err == (
        "mixer: error: pipelines/quickstart-mix.toml: this is a mix spec, not a pipeline: "
        "use `mixer mix pipelines/quickstart-mix.toml`\n"
    )
    code, _, err = cli(["mix", "pipelines/spt-proofpile.toml"], capsys)
    assert code == 1
    assert "(it has 'mix'), not a mix spec: run it as a pipeline (mixer run" in err


def test_error_wording(workspace, capsys):
    code, _, err = cli(
        [
            "tokenize",
            "pipelines/samples/fineweb",
            "-t",
            "pipelines/tokenizer.json",
            "-o",
            "s",
            "--eos-token",
            "<|eot|>",
        ],
        capsys,
    )
    assert code == 1
    assert "--eos-token '<|eot|>' is not in the vocabulary" in err
    Path("bad.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated}\n')
    code, _, err = cli(
        ["tokenize", "bad.jsonl", "-t", "pipelines/tokenizer.json", "-o", "s2"], capsys
    )
    assert code == 1
    assert "bad.jsonl:2: malformed JSON: Unterminated string starting at column 10" in err
    assert "at at" not in err


def test_exit_codes_are_the_ones_the_readme_documents(workspace, capsys):
    table = (REPO / "README.md").read_text().split("Exit codes:", 1)[1].split("\n\n")[1]
    documented = {int(m[0]): m[1] for m in re.findall(r"^\| (\d+) \| ([^|]*)", table, re.M)}
    assert set(documented) == {0, 1, 2, 130}
    assert "usage" in documented[2] and "error" in documented[1]
    assert cli(["tokenize", "--no-such-option"], capsys)[0] == 2  # usage
    assert cli(["inspect"], capsys)[0] == 2  # missing argument
    assert cli(["inspect", "nowhere"], capsys)[0] == 1  # a MixerError
    assert cli(["--version"], capsys)[0] == 0


def test_version_and_python_dash_m(capsys):
    import mixer

    code, out, _ = cli(["--version"], capsys)
    assert (code, out) == (0, f"mixer {mixer.__version__} (distribution {DISTRIBUTION})\n")
    done = subprocess.run(
        [sys.executable, "-m", "mixer", "--version"], capture_output=True, text=True, cwd=REPO
    )
    assert (done.returncode, done.stdout) == (0, out)


def test_counts_take_suffixes_with_exact_arithmetic():
    assert parse_count("200B") == 200 * 10**9
    assert parse_count("6.8M") == 6_800_000
    assert parse_count("1.5T") == 1_500_000_000_000
    assert parse_count("32k") == parse_count("32K") == 32_000
    assert parse_count("300e6") == parse_count(300e6) == parse_count("300_000_000") == 300 * 10**6
    assert parse_count(12) == 12
    for n in (12, 32_000, 6_800_000, 200 * 10**9, 1_500_000_000_000):
        assert parse_count(human_count(n)) == n
    for bad in ("1.5", "6.8X", "-3", "", "nan", "1e400k", True, None):
        with pytest.raises(MixerError):
            parse_count(bad, "--total-tokens")


def test_plan_reads_suffixed_counts_like_plain_numbers(capsys):
    plain = cli(["plan", "--domain-tokens", "300e6", "--total-tokens", "200e9", "--json"], capsys)
    suffixed = cli(["plan", "--domain-tokens", "300M", "--total-tokens", "200B", "--json"], capsys)
    assert plain[0] == suffixed[0] == 0
    assert plain[1] == suffixed[1]
    code, _, err = cli(["plan", "--domain-tokens", "3.5", "--total-tokens", "1B"], capsys)
    assert code == 1 and "--domain-tokens: expected a whole number" in err


def _store(tmp_path: Path, name: str, n: int) -> str:
    from mixer.store.writer import write_store

    rng = np.random.default_rng([len(name), *map(ord, name)])  # distinct stores per name
    write_store(tmp_path / name, [rng.integers(1, 50, 40) for _ in range(n)], vocab_size=64)
    return str(tmp_path / name)


def test_spec_seed_default_suffixed_tokens_and_normalized_relative_weights(tmp_path):
    stores = {name: _store(tmp_path, name, 60) for name in ("a", "b", "c")}
    relative = {
        "seq_len": 8,
        "total_tokens": "8k",
        "normalize": True,
        "source": [
            {"name": n, "store": stores[n], "weight": w}
            for n, w in zip("abc", (70, 20, 10), strict=True)
        ],
        "phase": [{"name": "end", "tokens": "800", "weights": {"a": 1, "b": 3}}],
    }
    exact = {
        "seq_len": 8,
        "seed": 0,
        "total_tokens": 8000,
        "source": [
            {"name": n, "store": stores[n], "weight": w}
            for n, w in zip("abc", (0.7, 0.2, 0.1), strict=True)
        ],
        "phase": [{"name": "end", "tokens": 800, "weights": {"a": 0.25, "b": 0.75}}],
    }
    spec = MixSpec.from_dict(relative)
    assert spec == MixSpec.from_dict(exact)
    assert spec.seed == 0
    assert MixSpec.from_dict(spec.to_dict()) == spec  # recorded weights need no normalize
    left, right = MixSampler(spec), MixSampler(MixSpec.from_dict(exact))
    assert np.array_equal(
        left.locate_many(np.arange(len(left))).source,
        right.locate_many(np.arange(len(right))).source,
    )
    relative.pop("normalize")
    with pytest.raises(MixerError, match="weights sum to 4.0, not 1"):
        MixSpec.from_dict(relative)


def test_start_or_stop_without_export_is_refused(workspace, capsys):
    code, _, err = cli(["mix", "pipelines/quickstart-mix.toml", "--start", "10"], capsys)
    assert (code, err) == (1, "mixer: error: --start selects blocks to export: add --export DIR\n")
    code, _, err = cli(["mix", "pipelines/quickstart-mix.toml", "--stop", "10"], capsys)
    assert code == 1 and "--stop selects blocks to export" in err


def test_plan_pilot_without_scipy_is_one_line_with_the_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    argv = ["plan", "--pilot", str(REPO / "pipelines/pilot-example.csv"), "--total-tokens", "200B"]
    code, out, err = cli(argv, capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"mixer: error: the scaling-law fit needs scipy: pip install '{DISTRIBUTION}[plan]'\n"
    )


def test_train_tiny_without_torch_is_one_line():
    script = (
        "import runpy, sys; sys.modules['torch'] = None; "
        "runpy.run_path('pipelines/train_tiny.py', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr == "train_tiny.py needs torch: pip install torch (CPU-only is enough)\n"


def test_distribution_name_is_free_of_the_unrelated_mixer_and_used_in_every_hint():
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "mixer-tokens"
    assert project["scripts"] == {"mixer": "mixer.cli:main"}
    texts = [p.read_text() for p in (REPO / "mixer").rglob("*.py")] + [
        (REPO / "README.md").read_text()
    ]
    for text in texts:
        assert not re.search(r"pip install '?mixer[\[ '`]", text)


def test_quick_start_outputs_are_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("stores/web/manifest.json", "out/spt/mix.png", "demo-out/mixed/x.bin"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert done.returncode == 0, f"{path} is not in .gitignore"


def test_inspect_breaks_a_store_down_by_input_and_shard_and_samples_documents(workspace, capsys):
    from tokenizers import Tokenizer

    tok = "pipelines/tokenizer.json"
    argv = ["tokenize", "pipelines/samples/fineweb", "pipelines/samples/dclm", "-t", tok]
    assert cli([*argv, "-o", "web", "--chunk-mb", "1"], capsys)[0] == 0
    code, out, err = cli(["inspect", "web", "--json", "--sample", "3", "--tokenizer", tok], capsys)
    assert code == 0, err
    s = json.loads(out)
    store = TokenStore.open("web")
    assert s["kind"] == "token store" and s["documents"] == store.num_documents
    assert sum(r["documents"] for r in s["inputs"]) == store.num_documents
    assert sum(r["tokens"] for r in s["shard_list"]) == store.num_tokens
    assert abs(sum(r["share"] for r in s["inputs"]) - 1) < 1e-9
    assert len(s["inputs"]) == 4 and len(s["shard_list"]) == store.manifest["num_shards"]
    assert {r["backend"] for r in s["shard_list"]} == set(s["backends"]) != set()
    lengths = np.concatenate([np.asarray(sh.index.lengths) for sh in store.shards])
    p = s["length_percentiles"]
    assert (p["p0"], p["p50"], p["p100"]) == (lengths.min(), int(np.median(lengths)), lengths.max())
    decoder = Tokenizer.from_file(tok)
    assert [r["index"] for r in s["sample"]] == [
        0,
        store.num_documents // 2,
        store.num_documents - 1,
    ]
    for row in s["sample"]:
        text = decoder.decode(store.document(row["index"]).tolist(), skip_special_tokens=False)
        assert text.startswith(row["text"].rstrip("…"))
        assert row["input"].endswith((".parquet", ".jsonl.zst")) and row["record"] >= 0
    code, out, _ = cli(["inspect", "web", "--sample", "1", "--tokenizer", tok], capsys)
    assert code == 0
    assert "inputs (4):" in out and "backend" in out and "median" in out and "document 0 (" in out


def test_stores_keep_their_tokenizer_and_decode_with_it_by_default(workspace, capsys):
    """tokenize copies tokenizer.json into the store (listed with its size; its sha256 is the
    tokenizer fingerprint); inspect --sample and explain decode with it, verify checks it, an
    export carries it, and a store without one (an older mixer's) opens and asks for it."""
    tok = Path("pipelines/tokenizer.json")
    argv = ["tokenize", "pipelines/samples/fineweb", "-t", str(tok), "-o", "web"]
    assert cli(argv, capsys)[0] == 0
    store = TokenStore.open("web")
    assert (Path("web") / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert store.manifest["tokenizer"]["file"] == "tokenizer.json"
    assert store.manifest["tokenizer"]["file_bytes"] == tok.stat().st_size
    assert store.tokenizer_path == Path("web") / "tokenizer.json"
    with_copy = cli(["inspect", "web", "--json", "--sample", "2"], capsys)
    given = cli(["inspect", "web", "--json", "--sample", "2", "--tokenizer", str(tok)], capsys)
    assert with_copy[0] == given[0] == 0 and with_copy[1] == given[1]
    assert all(isinstance(r["text"], str) for r in json.loads(with_copy[1])["sample"])
    spec = Path("mix.toml")
    spec.write_text(
        'seq_len = 8\ntotal_tokens = 800\n[[source]]\nname = "web"\nstore = "web"\nweight = 1\n'
    )
    code, out, err = cli(["explain", str(spec), "--step", "0", "--global-batch-size", "2"], capsys)
    assert code == 0 and "'" in out.split("\n", 2)[2] and "note" not in err
    assert cli(["mix", str(spec), "--export", "mixed"], capsys)[0] == 0
    exported = TokenStore.open("mixed")
    exported.verify()
    assert (Path("mixed") / "tokenizer.json").read_bytes() == tok.read_bytes()
    assert exported.manifest["tokenizer"] == store.manifest["tokenizer"]

    copy = Path("web") / "tokenizer.json"
    original = copy.read_bytes()
    copy.write_bytes(original.replace(b"{", b"[", 1))  # same size, other bytes
    code, _, err = cli(["verify", "web"], capsys)
    assert code == 1 and "tokenizer.json: sha256" in err and len(err.splitlines()) == 1
    code, _, err = cli(["inspect", "web", "--sample", "1"], capsys)
    assert code == 1 and "does not match the manifest" in err and len(err.splitlines()) == 1
    copy.write_bytes(original[:-1])
    code, _, err = cli(["inspect", "web"], capsys)
    assert code == 1 and "(truncated or replaced)" in err

    copy.unlink()  # as an older mixer wrote it: no copy, no keys
    manifest = json.loads((Path("web") / "manifest.json").read_text())
    del manifest["tokenizer"]["file"], manifest["tokenizer"]["file_bytes"]
    (Path("web") / "manifest.json").write_text(json.dumps(manifest))
    assert cli(["verify", "web"], capsys)[0] == 0
    code, out, err = cli(["inspect", "web", "--json", "--sample", "2"], capsys)
    assert code == 0 and "pass --tokenizer to show text" in err
    argv = ["inspect", "web", "--json", "--sample", "2", "--tokenizer", str(tok)]
    code, out, _ = cli(argv, capsys)
    assert code == 0 and json.loads(out)["sample"] == json.loads(given[1])["sample"]


def test_inspect_of_an_exported_mix_counts_blocks(workspace, capsys):
    assert cli(["run", "pipelines/spt-proofpile.toml", "--out", "o"], capsys)[0] == 0
    code, out, _ = cli(["inspect", "o/mixed"], capsys)
    assert code == 0
    assert "(exported mix)" in out and "blocks     3,906" in out
    assert "documents" not in out
    assert "mix        blocks [0, 3,906) of 513 tokens each, sources web, proofpile" in out


def test_plots_of_phased_recipes_name_the_mix_and_label_phases_on_a_log_token_axis(
    workspace, capsys, monkeypatch
):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    code, _, err = cli(["run", "pipelines/replay-midtrain.toml", "--out", "o"], capsys)
    assert code == 0, err
    assert Path("o/mix.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = saved
    share, epochs = fig.axes[:2]
    assert fig._suptitle.get_text().startswith("replay-midtrain: 2M tokens in 3,906 blocks of 512")
    assert share.get_yscale() == "log" and share.get_ylim()[0] < 1 / 1024
    assert {t.get_text() for t in share.texts} == {"pretrain", "midtrain"}
    assert epochs.get_xlabel() == "tokens" and epochs.get_xlim() == (0, 3906 * 512)
    assert {line.get_label() for line in epochs.get_lines()} >= {"web", "target"}
    targets = {
        round(float(y), 10) for c in share.collections for y in np.ravel(c.get_segments())[1::2]
    }
    assert {0.5, round(1 / 1024, 10)} <= targets
    code, out, _ = cli(["mix", "o/mix.json"], capsys)
    assert code == 0
    tables = re.findall(r"\n(  source .*?)\n\n", out, flags=re.S)
    assert len(tables) == 2  # pretrain, midtrain
    for table in tables:
        header, *rows = table.splitlines()
        assert header.split() == ["source", "weight", "used", "achieved", "blocks", "tokens"]
        assert all(len(row) == len(header) for row in rows), table  # no column overflows


def test_dry_run_plans_without_writing_and_json_summaries(workspace, capsys):
    tok = "pipelines/tokenizer.json"
    argv = ["tokenize", "pipelines/samples/fineweb", "-t", tok, "-o", "web"]
    code, out, _ = cli([*argv, "--dry-run", "--json"], capsys)
    assert code == 0
    plan = json.loads(out)  # two small files: one task reads both
    assert (plan["files"], plan["tasks"], plan["out"], plan["out_exists"]) == (2, 1, "web", False)
    assert plan["input_bytes"] == sum(Path(u).stat().st_size for u in plan["first_files"]) and plan[
        "formats"
    ] == {"parquet": 2}
    code, out, _ = cli([*argv, "--dry-run"], capsys)
    assert code == 0 and out.startswith("dry run: 2 files (parquet 2), ") and "in 1 task (" in out
    assert not Path("web").exists()
    code, out, _ = cli([*argv, "--json"], capsys)
    summary = json.loads(out)
    store = TokenStore.open("web")
    assert (summary["documents"], summary["tokens"], summary["shards"], summary["reused"]) == (
        store.num_documents,
        store.num_tokens,
        1,
        0,
    )
    assert summary["bytes_on_disk"] == sum(p.stat().st_size for p in Path("web").glob("shard-*"))
    assert summary["text_bytes"] > summary["bytes_on_disk"] / 4
    code, out, _ = cli(["verify", "web", "--json"], capsys)
    assert json.loads(out) == {
        "store": str(Path("web")),
        "ok": True,
        "shards": 1,
        "documents": store.num_documents,
        "tokens": store.num_tokens,
    }
    run = ["run", "pipelines/spt-proofpile.toml", "--out", "o"]
    code, out, _ = cli([*run, "--dry-run", "--json"], capsys)
    assert code == 0 and set(json.loads(out)["stores"]) == {"web", "proofpile"}
    assert not Path("o").exists()
    code, out, _ = cli([*run, "--json"], capsys)
    result = json.loads(out)
    assert result["report"] == json.loads(Path("o/report.json").read_text())
    assert (
        result["stores"]["proofpile"]["documents"]
        == TokenStore.open("o/stores/proofpile").num_documents
    )
    assert set(result["outputs"]) == {"report", "mix", "mixed", "plot"}


# Library errors name parameters (`format=`), the CLI its flags (`--format`): each case is the
# library call, what its message says, the same mistake on the command line and what that says.
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def flag_cases(tmp_path: Path, tokenizer: str) -> list[tuple]:
    from mixer.ingest.driver import tokenize
    from mixer.ingest.inputs import expand_inputs
    from mixer.ingest.job import TokenizeJob
    from mixer.ingest.peek import peek
    from mixer.ingest.select import Selection
    from mixer.plan import repeat_table, run_plan

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "a.jsonl").write_text('{"text": "hello world, a long enough record"}\n')
    (data / "b.csv").write_text("x\n")
    a, out = str(data / "a.jsonl"), str(tmp_path / "out")
    job = {"inputs": [a], "tokenizer": tokenizer, "out": out, "workers": 0}
    tok = ["tokenize", a, "-t", tokenizer, "-o", out, "--workers", "0"]
    return [
        (
            lambda: expand_inputs([str(data)], format="xml"),
            "format='xml' is not one of jsonl",
            [*tok, "--format", "xml"],  # checked by TokenizeJob first: a JobError
            "--format: 'xml' is not one of jsonl",
        ),
        (
            lambda: expand_inputs([str(data / "b.csv")]),
            "unknown format for",
            ["tokenize", str(data / "b.csv"), "-t", tokenizer, "-o", out],
            "; pass --format one of jsonl",
        ),
        (
            lambda: TokenizeJob(**job, eos_token="</s>", no_eos=True),
            "eos_token: cannot be given together with no_eos=True",
            [*tok, "--eos-token", "</s>", "--no-eos"],
            "--eos-token: cannot be given together with --no-eos",
        ),
        (
            lambda: tokenize(TokenizeJob(**job, max_document_bytes=8)),
            "(max_document_bytes=); raise the bound, or pass on_error='skip' to count",
            [*tok, "--max-document-bytes", "8"],
            "(--max-document-bytes); raise the bound, or pass --on-error 'skip' to count",
        ),
        (
            lambda: tokenize(TokenizeJob(**job, where=("src == 'x'",))),
            "where=\"src == 'x'\": field 'src' is missing",
            [*tok, "--where", "src == 'x'"],
            "--where \"src == 'x'\": field 'src' is missing",
        ),
        (
            lambda: Selection(include=("/abs/*.jsonl",)),
            "include='/abs/*.jsonl': patterns are relative",
            [*tok, "--include", "/abs/*.jsonl"],
            "--include '/abs/*.jsonl': patterns are relative",
        ),
        (
            lambda: peek([a], limit=0),
            "limit=0 and max_files=8: both must be at least 1",
            ["peek", a, "--limit", "0"],
            "--limit 0 and --files 8: both must be at least 1",
        ),
        (
            lambda: repeat_table(0, 10**9, [0.01], None),
            "domain_tokens=0: must be positive",
            ["plan", "--domain-tokens", "0", "--total-tokens", "1B"],
            "--domain-tokens 0: must be positive",
        ),
        (
            lambda: run_plan(10**6, 10**9, None, None, None, None, "x.png", False),
            "plot= needs pilot_csv=: it draws",
            ["plan", "--domain-tokens", "1M", "--total-tokens", "1B", "--plot", "x.png"],
            "--plot needs --pilot: it draws",
        ),
    ]


def test_library_errors_name_parameters_and_the_cli_names_its_flags(
    tmp_path, tokenizer_path, capsys
):
    for call, library, argv, command_line in flag_cases(tmp_path, tokenizer_path):
        with pytest.raises(MixerError) as raised:
            call()
        message = str(raised.value)
        assert library in message and not FLAG.search(message), message
        code, _, err = cli(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and command_line in err, err
        assert not re.search(r"\w=", err.replace(tokenizer_path, "")), err  # none left untold
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_recipe_s_errors_keep_its_toml_keys(tmp_path, tokenizer_path, capsys):
    """`mixer run` has no --format: a store's `format` stays the recipe's key, not a flag."""
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\ntokenizer = "{tokenizer_path}"\n'
        f'[stores.a]\ninputs = ["{tmp_path / "a.jsonl"}"]\nformat = "xml"\n'
        "[mix]\nseq_len = 8\nseed = 0\n[mix.sources.a]\nweight = 1.0\n"
    )
    code, _, err = cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--workers", "0"], capsys)
    assert code == 1 and "format: 'xml' is not one of" in err and "--format" not in err, err


def test_log_lines_name_the_command_s_flags(tmp_path, tokenizer_path, capsys, monkeypatch):
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "data" / "train" / "b.txt").write_text("world")  # not grouped with a.jsonl
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # two tasks, two CPUs, too little for Ray
    monkeypatch.setattr("mixer.ingest.driver._said_ray_note", False)  # said once per process
    argv = ["tokenize", str(tmp_path / "data"), "-t", tokenizer_path, "-o", str(tmp_path / "o")]
    code, _, err = cli(argv, capsys)
    assert code == 0 and "an --include pattern, or pass --all-splits, to read them" in err, err
    assert "--workers N forces Ray" in err, err


COMMANDS = ("tokenize", "peek", "inspect", "verify", "mix", "explain", "run", "plan")


@pytest.mark.parametrize("columns", ["80", "100"])
def test_every_help_reads_plainly(capsys, monkeypatch, columns):
    """No typer type labels (`INPUT <list[str]>`, `--field <str>`), no `{INPUT}...` usage, and
    no word long enough to be cut mid-word by the wrapping (`injectio n_fraction`)."""
    import typer.main

    from mixer.cli import app

    monkeypatch.setenv("COLUMNS", columns)
    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)
    for verb in ("", *COMMANDS):
        code, out, _ = cli([verb, "--help"] if verb else ["--help"], capsys)
        assert code == 0, verb
        assert not re.search(r"<[a-z][\w\[\], |]*>", out), (verb, out)
        usage = out.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage
    assert cli(["tokenize", "--help"], capsys)[1].startswith(
        "Usage: mixer tokenize [OPTIONS] INPUT...\n"
    )
    for verb, command in group.commands.items():
        texts = [command.help or ""] + [p.help or "" for p in command.params if hasattr(p, "help")]
        for word in " ".join(texts).split():
            assert len(word) <= 40, (verb, word)


def test_every_readme_guarantee_names_tests_that_exist():
    section = (REPO / "README.md").read_text().split("## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    guarantees = section.split("\n- **")[1:]
    assert len(guarantees) >= 15
    for guarantee in guarantees:
        cited = re.findall(r"(test_\w+\.py)::(test_\w+)", guarantee)
        assert cited, f"names no test: {guarantee[:60]}"
        for path, name in cited:
            assert re.search(rf"^def {name}\(", (REPO / "tests" / path).read_text(), re.M), name


def test_dry_runs_count_one_file_and_one_task_in_the_singular(workspace, capsys):
    Path("one.jsonl").write_text('{"text": "a single document"}\n')
    argv = ["tokenize", "one.jsonl", "-t", "pipelines/tokenizer.json", "-o", "m", "--dry-run"]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert out.startswith("dry run: 1 file (jsonl 1), ") and " in 1 task (" in out, out
    Path("one.toml").write_text(
        'tokenizer = "pipelines/tokenizer.json"\n[stores.m]\ninputs = ["one.jsonl"]\n[mix]\n'
        'seq_len = 4\nseed = 0\ntotal_tokens = 8\n[[mix.source]]\nname = "m"\nweight = 1.0\n'
    )
    code, out, err = cli(["run", "one.toml", "--out", "o", "--dry-run"], capsys)
    assert code == 0, err
    assert out.startswith("[m] 1 file, ") and ", 1 task -> " in out, out


def test_an_error_raised_in_a_ray_worker_names_the_flag_too(
    tmp_path, tokenizer_path, capsys, ray_local, monkeypatch
):
    """The parameters an error names travel with it from a Ray worker (pickled as its state)."""
    from mixer.ingest import driver

    def not_here(*args, **kwargs):
        raise AssertionError("ran in this process, not on Ray")

    monkeypatch.setattr(driver, "run_in_process", not_here)
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "hello world, a long enough record"}\n')
    argv = ["tokenize", str(path), "-t", tokenizer_path, "-o", str(tmp_path / "o")]
    argv += ["--workers", "2", "--max-document-bytes", "8", "--no-progress"]
    code, _, err = cli(argv, capsys)
    assert code == 1 and "(--max-document-bytes); raise the bound, or pass --on-error" in err, err
