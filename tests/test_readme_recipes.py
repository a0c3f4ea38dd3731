"""The README's trainer recipes, executed as written (each `<!-- recipe: NAME -->` block)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.mix.sampler import MixSampler

README = Path(__file__).parent.parent / "README.md"


def recipe(name: str) -> str:
    found = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert found, f"README has no recipe {name!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("recipes")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))


def run(name: str, **names) -> dict:
    scope = dict(names)
    exec(compile(recipe(name), f"README recipe {name}", "exec"), scope)
    return scope


def test_torch_recipe(sampler):
    pytest.importorskip("torch")
    scope = run("torch", sampler=sampler)
    assert scope["state"]["samples"] == 3 * 8
    first = next(iter(scope["resumed"]))
    assert first["index"].tolist() == [24, 25] and first["step"] == 3


def test_stateful_recipe(sampler):
    pytest.importorskip("torchdata")
    scope = run("stateful", sampler=sampler)
    assert next(iter(scope["again"]))["step"] == 3
    assert scope["whole"]["step"] == 3 and scope["whole"]["samples"] == 12
    batch = next(iter(scope["map_loader"]))
    assert batch["cu_seqlens"][-1] == 4 * 8


def test_hf_recipe(sampler, tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_hf import model

    scope = run("hf", sampler=sampler, out=str(tmp_path), model=model())
    assert scope["trainer"].state.global_step == 4
    assert scope["model"].seen[0] == [sampler[i].tolist() for i in range(4)]
    assert (tmp_path / "checkpoint-2").is_dir()
    logged = [e for e in scope["trainer"].state.log_history if "loss" in e]
    assert logged and all("loss/a" in e and "loss/b" in e for e in logged)
    del transformers


@pytest.mark.slow  # importing lightning alone takes 8-16 s here
def test_lightning_recipe(sampler, tmp_path):
    pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    scope = run("lightning", sampler=sampler, out=str(tmp_path))
    expected = [list(range(s * 4, s * 4 + 4)) for s in range(25)]
    assert scope["model"].seen == expected  # the whole mix, in order
    # the checkpoint at step 10 holds the loader's state, and the resumed fit trains on exactly
    # the batches the uninterrupted one did after step 10, to the end of the epoch
    ckpt = torch.load(tmp_path / "epoch=0-step=10.ckpt", weights_only=False)
    (state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["step"] == 10 and state["samples"] == 40
    assert scope["resumed"].seen == expected[10:]


def test_grain_recipe(sampler):
    pytest.importorskip("grain")
    scope = run("grain", sampler=sampler)
    assert scope["first"]["index"].tolist() == [0, 1, 2, 3]
    assert scope["first"]["cu_seqlens"][-1] == 4 * 8


def test_steer_stateful_recipe(sampler):
    pytest.importorskip("torchdata")
    from mixer.mix.loader import BatchIterator
    from mixer.mix.torch import stream_state

    scope = run("steer-stateful", sampler=sampler)
    assert len(stream_state(scope["ckpt"])["steering"]["amendments"]) == 1
    steered = sampler.amended({"a": 0.5, "b": 0.5}, 8).amended({"b": 1.0}, 40)
    expected = {b["step"]: b["tokens"] for b in BatchIterator(steered, 4) if b["step"] >= 4}
    seen = scope["seen"]
    assert sorted(seen) == sorted(expected)
    assert all(np.array_equal(seen[s].numpy(), expected[s]) for s in seen)


def test_steer_hf_recipes(sampler, tmp_path):
    pytest.importorskip("transformers")
    import json

    from test_hf import model

    scope = run("steer-hf", sampler=sampler, out=str(tmp_path), model=model())
    saved = json.loads((tmp_path / "checkpoint-2" / "mixer_state.json").read_text())
    assert saved["steering"]["amendments"] == [{"at_block": 12, "weights": {"b": 1.0}}]
    assert scope["model"].seen[3] == [sampler.amended({"b": 1.0}, 12)[i].tolist()
                                      for i in range(12, 16)]  # fmt: skip
    args = scope["args"]
    policy = run("steer-policy", sampler=sampler, model=model(), args=args)
    assert policy["trainer"].train_dataset.sampler.amendments  # proposals after steps 1 and 3
