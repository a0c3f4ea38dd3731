"""The mix spec: which stores, in what proportions, for how long, in which phases.

A spec is plain data validated on construction, so a typo fails before any store is opened::

    seq_len = 2048
    seed = 1234
    total_tokens = 10_000_000_000     # or: steps = N and global_batch_size = B

    [[source]]
    name = "web"
    store = "stores/web"              # relative to this file, absolute, or an fsspec URL
    weight = 0.98
    [[source]]
    name = "proofpile"
    store = "stores/proofpile"
    weight = 0.02
    max_repeats = 50                  # optional: no block may be used more than 50 times

    [[phase]]
    name = "finetune"
    tokens = 1_000_000_000            # or: blocks = N
    weights = { proofpile = 0.99, web = 0.01 }

Phases run in the order listed, after a base phase named "main" that mixes by the sources'
`weight` and covers whatever part of the run the listed phases leave (none when they cover it
all; then `weight` may be omitted). A source missing from a phase's `weights` has weight 0 there.
Phase boundaries fall at block `floor(cumulative_tokens / seq_len)`, so phases tile the run
exactly even when their token counts are not multiples of `seq_len`.

Checks that need the stores (tokenizer mismatch, a store too small for one block, max_repeats)
happen when `mixer.mix.sampler.MixSampler` opens them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mixer.errors import SpecError

WEIGHT_TOLERANCE = 1e-9
BASE_PHASE = "main"

_TOP_KEYS = ("seq_len", "seed", "total_tokens", "steps", "global_batch_size", "source", "phase")
_SOURCE_KEYS = ("name", "store", "weight", "max_repeats")
_PHASE_KEYS = ("name", "tokens", "blocks", "weights")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(key: str, value: object) -> int:
    if not _is_int(value) or value < 1:
        raise SpecError(f"{key}: must be a positive integer, got {value!r}")
    return value


def _check_weight(key: str, weight: object) -> None:
    if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
        raise SpecError(f"{key}: weight must be a number >= 0, got {weight!r}")


def _check_weights(key: str, weights: Mapping[str, float]) -> None:
    for name, weight in weights.items():
        _check_weight(f"{key}.{name}", weight)
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise SpecError(f"{key}: weights sum to {total!r}, not 1 (within {WEIGHT_TOLERANCE})")


@dataclass(frozen=True)
class SourceSpec:
    """One token store and its weight in the base phase."""

    name: str
    store: str
    weight: float | None = None
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"source.name: must be a non-empty string, got {self.name!r}")
        if not isinstance(self.store, (str, os.PathLike)) or not str(self.store):
            raise SpecError(
                f"source '{self.name}'.store: must be a path or URL, got {self.store!r}"
            )
        object.__setattr__(self, "store", os.fspath(self.store))
        if self.weight is not None:
            _check_weight(f"source '{self.name}'.weight", self.weight)
        if self.max_repeats is not None:
            _positive_int(f"source '{self.name}'.max_repeats", self.max_repeats)


@dataclass(frozen=True)
class PhaseSpec:
    """A stretch of the run, given in tokens or in blocks, with its own weights."""

    name: str
    weights: Mapping[str, float]
    tokens: int | None = None
    blocks: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"phase.name: must be a non-empty string, got {self.name!r}")
        key = f"phase '{self.name}'"
        if (self.tokens is None) == (self.blocks is None):
            raise SpecError(f"{key}: give exactly one of tokens or blocks")
        if self.tokens is not None:
            _positive_int(f"{key}.tokens", self.tokens)
        if self.blocks is not None:
            _positive_int(f"{key}.blocks", self.blocks)
        if not isinstance(self.weights, Mapping):
            raise SpecError(f"{key}.weights: must be a table of source = weight")
        object.__setattr__(self, "weights", dict(self.weights))  # a copy: callers keep theirs
        _check_weights(f"{key}.weights", self.weights)


@dataclass(frozen=True)
class Phase:
    """A phase resolved to global block indices [start, start + blocks)."""

    name: str
    start: int
    blocks: int
    weights: Mapping[str, float]


@dataclass(frozen=True)
class MixSpec:
    """A validated mix: constructing one with bad values raises SpecError naming the key."""

    seq_len: int
    seed: int
    sources: tuple[SourceSpec, ...]
    total_tokens: int | None = None
    steps: int | None = None
    global_batch_size: int | None = None
    phases: tuple[PhaseSpec, ...] = ()
    plan: tuple[Phase, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int("seq_len", self.seq_len)
        if not _is_int(self.seed):
            raise SpecError(f"seed: must be an integer, got {self.seed!r}")
        by_tokens = self.total_tokens is not None
        by_steps = self.steps is not None or self.global_batch_size is not None
        if by_tokens == by_steps:
            raise SpecError("total_tokens: give total_tokens, or steps with global_batch_size")
        if by_tokens:
            _positive_int("total_tokens", self.total_tokens)
        else:
            _positive_int("steps", self.steps)
            _positive_int("global_batch_size", self.global_batch_size)
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "phases", tuple(self.phases))
        if not self.sources:
            raise SpecError("source: a mix needs at least one [[source]]")
        names = [s.name for s in self.sources]
        for name in names:
            if names.count(name) > 1:
                raise SpecError(f"source.name: {name!r} is used by more than one source")
        for phase in self.phases:
            for name in phase.weights:
                if name not in names:
                    raise SpecError(
                        f"phase '{phase.name}'.weights: unknown source {name!r} "
                        f"(sources: {', '.join(names)})"
                    )
        object.__setattr__(self, "plan", self._resolve_phases())

    @property
    def run_tokens(self) -> int:
        """Tokens the run consumes: total_tokens, or steps x global_batch_size x seq_len."""
        if self.total_tokens is not None:
            return self.total_tokens
        return self.steps * self.global_batch_size * self.seq_len

    @property
    def num_blocks(self) -> int:
        return self.run_tokens // self.seq_len

    def _resolve_phases(self) -> tuple[Phase, ...]:
        if self.num_blocks < 1:
            raise SpecError(
                f"total_tokens: {self.total_tokens} is less than one block "
                f"of seq_len {self.seq_len}"
            )
        listed = [
            p.tokens if p.tokens is not None else p.blocks * self.seq_len for p in self.phases
        ]
        base_tokens = self.run_tokens - sum(listed)
        if base_tokens < 0:
            raise SpecError(
                f"phase: phases need {sum(listed)} tokens but the run has {self.run_tokens}"
            )
        named = [
            (p.name, tokens, dict(p.weights)) for p, tokens in zip(self.phases, listed, strict=True)
        ]
        if base_tokens > 0:
            missing = [s.name for s in self.sources if s.weight is None]
            if missing:
                raise SpecError(
                    f"source '{missing[0]}'.weight: missing, and the base phase {BASE_PHASE!r} "
                    f"needs it for the {base_tokens} tokens the phases leave"
                )
            base = {s.name: s.weight for s in self.sources}
            _check_weights("source.weight", base)
            named.insert(0, (BASE_PHASE, base_tokens, base))
        plan, cumulative = [], 0
        for name, tokens, weights in named:
            if any(p.name == name for p in plan):
                raise SpecError(
                    f"phase.name: {name!r} is used twice (the base phase is {BASE_PHASE!r})"
                )
            start = cumulative // self.seq_len
            cumulative += tokens
            blocks = cumulative // self.seq_len - start
            if blocks == 0:
                raise SpecError(
                    f"phase '{name}'.tokens: {tokens} is less than one block "
                    f"of seq_len {self.seq_len}"
                )
            full = {s.name: float(weights.get(s.name, 0.0)) for s in self.sources}
            plan.append(Phase(name, start, blocks, full))
        return tuple(plan)

    # -- conversion
    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> MixSpec:
        """Read a TOML spec; relative store paths resolve against the file's directory."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: spec file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"{path}: invalid TOML ({e})") from None
        return cls.from_dict(data, base_dir=path.parent)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None
    ) -> MixSpec:
        """Build from parsed TOML; unknown keys are errors so that typos cannot pass silently."""
        _no_unknown_keys("spec", data, _TOP_KEYS)
        sources = []
        for number, entry in enumerate(_tables(data, "source")):
            _no_unknown_keys(f"source[{number}]", entry, _SOURCE_KEYS)
            if "name" not in entry or "store" not in entry:
                raise SpecError(f"source[{number}]: needs name and store")
            store = entry["store"]
            if base_dir is not None and isinstance(store, str):
                store = _resolve_store(store, Path(base_dir))
            sources.append(
                SourceSpec(entry["name"], store, entry.get("weight"), entry.get("max_repeats"))
            )
        phases = []
        for number, entry in enumerate(_tables(data, "phase")):
            _no_unknown_keys(f"phase[{number}]", entry, _PHASE_KEYS)
            if "name" not in entry or "weights" not in entry:
                raise SpecError(f"phase[{number}]: needs name and weights")
            phases.append(
                PhaseSpec(entry["name"], entry["weights"], entry.get("tokens"), entry.get("blocks"))
            )
        for key in ("seq_len", "seed"):
            if key not in data:
                raise SpecError(f"{key}: missing")
        return cls(
            seq_len=data["seq_len"],
            seed=data["seed"],
            sources=tuple(sources),
            total_tokens=data.get("total_tokens"),
            steps=data.get("steps"),
            global_batch_size=data.get("global_batch_size"),
            phases=tuple(phases),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as TOML-shaped data (what `from_dict` reads); recorded in exported stores."""
        out: dict[str, Any] = {"seq_len": self.seq_len, "seed": self.seed}
        for key in ("total_tokens", "steps", "global_batch_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["source"] = [{k: v for k, v in vars(s).items() if v is not None} for s in self.sources]
        if self.phases:
            out["phase"] = [
                {
                    "name": p.name,
                    **({"tokens": p.tokens} if p.tokens is not None else {"blocks": p.blocks}),
                    "weights": dict(p.weights),
                }
                for p in self.phases
            ]
        return out


def _tables(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise SpecError(f"{key}: must be an array of tables ([[{key}]])")
    return tables


def _no_unknown_keys(where: str, entry: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in entry:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")


def _resolve_store(store: str, base_dir: Path) -> str:
    if "://" in store or Path(store).is_absolute():
        return store
    return str(base_dir / store)
