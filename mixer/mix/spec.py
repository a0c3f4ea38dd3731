"""The mix spec: which stores, in what proportions, for how long, in which phases.

A spec is plain data validated on construction, so a typo fails before any store is opened::

    seq_len = 2048
    seed = 1234                       # optional, default 0
    total_tokens = "10B"              # or 10_000_000_000; or: steps = N and global_batch_size = B
    normalize = false                 # true: weights are relative (70/20/10) and scaled to sum 1

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
    tokens = 1_000_000_000            # or: blocks = N, or a start: start_step / start_tokens
    weights = { proofpile = 0.99, web = 0.01 }

Phases run in the order listed, after a base phase named "main" that mixes by the sources'
`weight`. A phase is given by its length (`tokens` or `blocks`) or by where it starts
(`start_step = N`, which needs `steps`/`global_batch_size`, or `start_tokens = T`). A phase
with a start runs from there until the phases after it, which are packed against the next start
or the end of the run; "main" starts at 0 and takes whatever the listed phases leave before the
first of them (nothing when they cover it; then `weight` may be omitted). So a spec with only
length phases places them at the end of the run, and adding a phase with a start changes
nothing before that start: that is how a run's mix is changed mid-way (`MixSampler.amended`
does the same for a live loader). A source missing from a phase's `weights` has weight 0 there.
Phase boundaries fall at block `floor(token_offset / seq_len)`, so phases tile the run exactly
even when their token counts are not multiples of `seq_len`.

`skip_steps = [[a, b], ...]` (with `global_batch_size`) makes the loaders skip global steps
[a, b): their blocks are consumed, not re-drawn, so every later step is unchanged.

Token counts (`total_tokens`, a phase's `tokens`) may be strings with a suffix, read by
`mixer.units.parse_count`: "200B", "6.8M", "32k". With `normalize = true` every weight table
(the sources' `weight`s, each phase's `weights`) is divided by its sum, as Megatron's
`--data-path 70 a 20 b 10 c` does; without it weights must sum to 1, so a typo cannot silently
shift a mix. `to_dict` writes the normalized weights, so a recorded spec needs no flag.

Checks that need the stores (tokenizer mismatch, a store too small for one block, max_repeats)
happen when `mixer.mix.sampler.MixSampler` opens them.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from mixer.config import no_unknown_keys, tomllib
from mixer.errors import MixerError, SpecError
from mixer.units import parse_count

WEIGHT_TOLERANCE = 1e-9
MAX_BLOCKS = 1 << 62  # blocks are indexed with int64 (numpy) and len() (an index-sized int)
BASE_PHASE = "main"
DEFAULT_SEED = 0  # a spec without `seed`

TOML = "toml"  # field metadata: the TOML key of a field whose name differs (`sources` -> source)
NORMALIZE = "normalize"  # a TOML key that is no field: how `from_dict` reads the weights


def toml_keys(cls: type) -> tuple[str, ...]:
    """The TOML keys of a spec dataclass: its init fields, under their `TOML` name if any."""
    return tuple(f.metadata.get(TOML, f.name) for f in fields(cls) if f.init)


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
    """A stretch of the run with its own weights: a length (tokens or blocks) or a start
    (start_step or start_tokens), exactly one of the four."""

    name: str
    weights: Mapping[str, float]
    tokens: int | None = None
    blocks: int | None = None
    start_step: int | None = None
    start_tokens: int | None = None

    @classmethod
    def extent_keys(cls) -> tuple[str, ...]:
        """The four ways to place a phase: every field but its name and weights."""
        return tuple(k for k in toml_keys(cls) if k not in ("name", "weights"))

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"phase.name: must be a non-empty string, got {self.name!r}")
        if "@" in self.name:
            raise SpecError(f"phase.name: {self.name!r}: '@' is reserved for amended phases")
        key = f"phase '{self.name}'"
        given = [k for k in self.extent_keys() if getattr(self, k) is not None]
        if len(given) != 1:
            raise SpecError(
                f"{key}: give exactly one of tokens or blocks (a length) or start_step or "
                f"start_tokens (a start), got {', '.join(given) or 'none'}"
            )
        for k in ("tokens", "blocks"):
            if getattr(self, k) is not None:
                _positive_int(f"{key}.{k}", getattr(self, k))
        for k in ("start_step", "start_tokens"):
            value = getattr(self, k)
            if value is not None and (not _is_int(value) or value < 0):
                raise SpecError(f"{key}.{k}: must be an integer >= 0, got {value!r}")
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
class Amendment:
    """New weights from global block `at_block` to the end of the phase that block falls in.

    Applied to a plan it is a new phase, never a rewrite: the phase it falls in keeps its blocks
    before `at_block`, and later phases keep theirs. JSON form: `{"at_block": n, "weights": {}}`.
    """

    at_block: int
    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        if not _is_int(self.at_block) or self.at_block < 0:
            raise SpecError(f"at_block: must be an integer >= 0, got {self.at_block!r}")
        if not isinstance(self.weights, Mapping):
            raise SpecError(f"weights: must be a mapping of source = weight, got {self.weights!r}")
        object.__setattr__(self, "weights", {str(k): v for k, v in self.weights.items()})
        _check_weights("weights", self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {"at_block": self.at_block, "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Amendment:
        try:
            return cls(data["at_block"], data["weights"])
        except (KeyError, TypeError):
            raise SpecError(f"amendment: expected {{at_block, weights}}, got {data!r}") from None


def amend_plan(
    plan: tuple[Phase, ...], amendments: Sequence[Amendment], sources: tuple[str, ...]
) -> tuple[Phase, ...]:
    """`plan` with each amendment in turn splitting the phase that holds its `at_block` there
    (see `Amendment`). One pass: each amendment finds its phase by bisection, so N amendments
    cost O(N log N) Python steps (plus list inserts, a memmove each), not N passes over a plan
    that grows to N phases."""
    out = list(plan)
    starts = [phase.start for phase in out]
    end = plan[-1].start + plan[-1].blocks
    for amendment in amendments:
        for name in amendment.weights:
            if name not in sources:
                raise SpecError(f"weights: unknown source {name!r} (sources: {', '.join(sources)})")
        at = amendment.at_block
        if at >= end:
            raise SpecError(f"at_block: {at} is at or after the end of the run ({end} blocks)")
        p = bisect_right(starts, at) - 1
        phase = out[p]
        base = phase.name.split("@")[0]
        weights = {n: float(amendment.weights.get(n, 0.0)) for n in sources}
        new = Phase(f"{base}@{at}", at, phase.start + phase.blocks - at, weights)
        if at > phase.start:
            out[p] = Phase(phase.name, phase.start, at - phase.start, phase.weights)
            out.insert(p + 1, new)
            starts.insert(p + 1, at)
        else:
            out[p] = new
    return tuple(out)


@dataclass(frozen=True)
class MixSpec:
    """A validated mix: constructing one with bad values raises SpecError naming the key."""

    seq_len: int
    seed: int
    sources: tuple[SourceSpec, ...] = field(metadata={TOML: "source"})
    total_tokens: int | None = None
    steps: int | None = None
    global_batch_size: int | None = None
    phases: tuple[PhaseSpec, ...] = field(default=(), metadata={TOML: "phase"})
    skip_steps: tuple[tuple[int, int], ...] = ()
    plan: tuple[Phase, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int("seq_len", self.seq_len)
        if not _is_int(self.seed):
            raise SpecError(f"seed: must be an integer, got {self.seed!r}")
        if not -(1 << 63) <= self.seed < 1 << 64:
            raise SpecError(
                f"seed: must fit in 64 bits, got an integer of {self.seed.bit_length()} bits"
            )
        by_tokens = self.total_tokens is not None
        by_steps = self.steps is not None or self.global_batch_size is not None
        if by_tokens == by_steps:
            raise SpecError("total_tokens: give total_tokens, or steps with global_batch_size")
        if by_tokens:
            _positive_int("total_tokens", self.total_tokens)
        else:
            _positive_int("steps", self.steps)
            _positive_int("global_batch_size", self.global_batch_size)
        if self.run_tokens // self.seq_len >= MAX_BLOCKS:
            raise SpecError(
                f"total_tokens: {self.run_tokens} tokens make {self.run_tokens // self.seq_len} "
                f"blocks of seq_len {self.seq_len}; a mix holds fewer than 2**62"
            )
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "phases", tuple(self.phases))
        if not self.sources:
            raise SpecError("source: a mix needs at least one [[source]]")
        names = [s.name for s in self.sources]
        seen: dict[str, str] = {}
        for name in names:
            # NFC: "café" typed two ways is one name, not two sources that look alike
            key = unicodedata.normalize("NFC", name)
            other = seen.setdefault(key, name)
            if other is not name or names.count(name) > 1:
                if other == name:
                    raise SpecError(f"source.name: {name!r} is used by more than one source")
                raise SpecError(
                    f"source.name: {other!r} and {name!r} differ only in Unicode normalization "
                    "(NFC); give sources names that differ visibly"
                )
        for phase in self.phases:
            for name in phase.weights:
                if name not in names:
                    raise SpecError(
                        f"phase '{phase.name}'.weights: unknown source {name!r} "
                        f"(sources: {', '.join(names)})"
                    )
        object.__setattr__(self, "plan", self._resolve_phases())
        object.__setattr__(self, "skip_steps", self._check_skips())

    def _check_skips(self) -> tuple[tuple[int, int], ...]:
        if not isinstance(self.skip_steps, (list, tuple)):
            raise SpecError(
                f"skip_steps: must be a list of [start, stop] pairs, got {self.skip_steps!r}"
            )
        if self.skip_steps and self.global_batch_size is None:
            raise SpecError(
                "skip_steps: needs steps and global_batch_size (this spec gives total_tokens)"
            )
        out = []
        for pair in self.skip_steps:
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(_is_int(x) for x in pair)
                or not 0 <= pair[0] < pair[1] <= self.steps
            ):
                raise SpecError(
                    f"skip_steps: {pair!r} is not a [start, stop] pair with "
                    f"0 <= start < stop <= steps ({self.steps})"
                )
            out.append((pair[0], pair[1]))
        return tuple(sorted(out))

    @property
    def skip_blocks(self) -> tuple[tuple[int, int], ...]:
        """`skip_steps` as global block ranges [start, stop)."""
        g = self.global_batch_size or 0
        return tuple((a * g, b * g) for a, b in self.skip_steps)

    @property
    def run_tokens(self) -> int:
        """Tokens the run consumes: total_tokens, or steps x global_batch_size x seq_len."""
        if self.total_tokens is not None:
            return self.total_tokens
        return self.steps * self.global_batch_size * self.seq_len

    @property
    def num_blocks(self) -> int:
        return self.run_tokens // self.seq_len

    def _start_tokens(self, phase: PhaseSpec) -> int:
        """Token offset where a phase given by its start begins."""
        if phase.start_tokens is not None:
            return phase.start_tokens
        if self.global_batch_size is None:
            raise SpecError(
                f"phase '{phase.name}'.start_step: needs steps and global_batch_size (this spec "
                "gives total_tokens); use start_tokens"
            )
        return phase.start_step * self.global_batch_size * self.seq_len

    def _resolve_phases(self) -> tuple[Phase, ...]:
        """Phases as token ranges, then blocks: each start anchors its phase, and the length
        phases after it are packed against the next start (or the end of the run)."""
        if self.num_blocks < 1:
            raise SpecError(
                f"total_tokens: {self.total_tokens} is less than one block "
                f"of seq_len {self.seq_len}"
            )
        # segments: an anchor (the base phase at 0, or a phase with a start) + length phases
        segments: list[tuple[PhaseSpec | None, int, list[PhaseSpec]]] = [(None, 0, [])]
        for phase in self.phases:
            if phase.start_step is None and phase.start_tokens is None:
                segments[-1][2].append(phase)
                continue
            start, (before, before_start, _) = self._start_tokens(phase), segments[-1]
            if start >= self.run_tokens:
                raise SpecError(
                    f"phase '{phase.name}': starts at token {start}, at or after the end of "
                    f"the run ({self.run_tokens} tokens)"
                )
            if before is not None and start <= before_start:
                raise SpecError(
                    f"phase '{phase.name}': starts at token {start}, not after phase "
                    f"'{before.name}' (token {before_start}); list phases in the order they run"
                )
            segments.append((phase, start, []))
        named: list[tuple[str, int, int, dict[str, float]]] = []  # name, start, stop, weights
        for number, (anchor, start, packed) in enumerate(segments):
            stop = segments[number + 1][1] if number + 1 < len(segments) else self.run_tokens
            lengths = [
                p.tokens if p.tokens is not None else p.blocks * self.seq_len for p in packed
            ]
            anchor_stop = stop - sum(lengths)
            if anchor_stop < start:
                if anchor is None and len(segments) == 1:
                    raise SpecError(
                        f"phase: phases need {sum(lengths)} tokens but the run has "
                        f"{self.run_tokens}"
                    )
                where = "the run" if anchor is None else f"phase '{anchor.name}'"
                raise SpecError(
                    f"phase '{packed[0].name}': the {len(packed)} phase(s) from here need "
                    f"{sum(lengths)} tokens but only {stop - start} lie between the start of "
                    f"{where} (token {start}) and {stop}"
                )
            if anchor is not None:
                named.append((anchor.name, start, anchor_stop, dict(anchor.weights)))
            elif anchor_stop > start:
                missing = [s.name for s in self.sources if s.weight is None]
                if missing:
                    raise SpecError(
                        f"source '{missing[0]}'.weight: missing, and the base phase "
                        f"{BASE_PHASE!r} needs it for the {anchor_stop} tokens the phases leave"
                    )
                base = {s.name: s.weight for s in self.sources}
                _check_weights("source.weight", base)
                named.append((BASE_PHASE, 0, anchor_stop, base))
            cumulative = anchor_stop
            for phase, tokens in zip(packed, lengths, strict=True):
                named.append((phase.name, cumulative, cumulative + tokens, dict(phase.weights)))
                cumulative += tokens
        plan: list[Phase] = []
        for name, start, stop, weights in named:
            if any(p.name == name for p in plan):
                raise SpecError(
                    f"phase.name: {name!r} is used twice (the base phase is {BASE_PHASE!r})"
                )
            first = start // self.seq_len
            blocks = stop // self.seq_len - first
            if blocks == 0:
                key = "tokens" if any(p.name == name and p.tokens for p in self.phases) else ""
                raise SpecError(
                    f"phase '{name}'{'.' + key if key else ''}: {stop - start} tokens (from "
                    f"token {start}) is less than one block of seq_len {self.seq_len}"
                )
            full = {s.name: float(weights.get(s.name, 0.0)) for s in self.sources}
            plan.append(Phase(name, first, blocks, full))
        return tuple(plan)

    # -- conversion
    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> MixSpec:
        """Read a TOML spec; relative store paths resolve against the file's directory."""
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise SpecError(f"{path}: spec file not found") from None
        except IsADirectoryError:
            raise SpecError(f"{path}: is a directory, not a mix spec (TOML)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"{path}: invalid TOML ({e})") from None
        except ValueError as e:  # an integer past Python's 4300-digit conversion limit
            raise SpecError(f"{path}: invalid spec ({e})") from None
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a mix spec must be a table of keys")
        pipeline = sorted({"stores", "mix", "tokenizer"} & set(data))
        if pipeline:
            raise SpecError(
                f"{path}: this is a pipeline recipe (it has {pipeline[0]!r}), not a mix spec: "
                "run it as a pipeline (mixer run, or mixer.pipeline.run_pipeline)"
            )
        return cls.from_dict(data, base_dir=path.parent)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None
    ) -> MixSpec:
        """Build from parsed TOML; unknown keys are errors so that typos cannot pass silently."""
        no_unknown_keys("spec", data, (*toml_keys(cls), NORMALIZE))
        normalize = data.get(NORMALIZE, False)
        if not isinstance(normalize, bool):
            raise SpecError(f"normalize: must be true or false, got {normalize!r}")
        sources = []
        for number, entry in enumerate(_tables(data, "source")):
            no_unknown_keys(f"source[{number}]", entry, toml_keys(SourceSpec))
            if "name" not in entry or "store" not in entry:
                raise SpecError(f"source[{number}]: needs name and store")
            store = entry["store"]
            if base_dir is not None and isinstance(store, str):
                store = _resolve_store(store, Path(base_dir))
            sources.append(
                SourceSpec(entry["name"], store, entry.get("weight"), entry.get("max_repeats"))
            )
        if normalize and any(s.weight is not None for s in sources):
            weights = _normalized("source.weight", {s.name: s.weight for s in sources})
            sources = [replace(s, weight=weights[s.name]) for s in sources]
        phases = []
        for number, entry in enumerate(_tables(data, "phase")):
            no_unknown_keys(f"phase[{number}]", entry, toml_keys(PhaseSpec))
            if "name" not in entry or "weights" not in entry:
                raise SpecError(f"phase[{number}]: needs name and weights")
            weights = entry["weights"]
            if normalize and isinstance(weights, Mapping):
                weights = _normalized(f"phase '{entry.get('name')}'.weights", weights)
            extent = {k: entry[k] for k in PhaseSpec.extent_keys() if k in entry}
            for key in ("tokens", "start_tokens"):
                if key in extent:
                    extent[key] = _count(f"phase '{entry.get('name')}'.{key}", extent[key])
            phases.append(PhaseSpec(entry["name"], weights, **extent))
        if "seq_len" not in data:
            raise SpecError("seq_len: missing")
        return cls(
            seq_len=data["seq_len"],
            seed=data.get("seed", DEFAULT_SEED),
            sources=tuple(sources),
            total_tokens=_count("total_tokens", data.get("total_tokens")),
            steps=data.get("steps"),
            global_batch_size=data.get("global_batch_size"),
            phases=tuple(phases),
            skip_steps=data.get("skip_steps", ()),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as TOML-shaped data (what `from_dict` reads); recorded in exported stores."""
        out: dict[str, Any] = {"seq_len": self.seq_len, "seed": self.seed}
        for key in ("total_tokens", "steps", "global_batch_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.skip_steps:
            out["skip_steps"] = [list(r) for r in self.skip_steps]
        out["source"] = [{k: v for k, v in vars(s).items() if v is not None} for s in self.sources]
        if self.phases:
            out["phase"] = [
                {
                    "name": p.name,
                    **{k: getattr(p, k) for k in p.extent_keys() if getattr(p, k) is not None},
                    "weights": dict(p.weights),
                }
                for p in self.phases
            ]
        return out


def _count(key: str, value: object) -> object:
    """A token count given as a string with a suffix ("200B") as an int; anything else as is."""
    if not isinstance(value, str):
        return value
    try:
        return parse_count(value, key)
    except MixerError as e:
        raise SpecError(str(e)) from None


def _normalized(key: str, weights: Mapping[str, object]) -> dict[str, float]:
    """Relative weights (70/20/10) scaled to sum to 1, exactly where the inputs are integers."""
    for name, weight in weights.items():
        _check_weight(f"{key}.{name}", weight)
    total = sum(Fraction(w) for w in weights.values())
    if total <= 0:
        raise SpecError(f"{key}: weights sum to 0; normalize needs a positive total")
    return {name: float(Fraction(w) / total) for name, w in weights.items()}


def _tables(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise SpecError(f"{key}: must be an array of tables ([[{key}]])")
    return tables


def _resolve_store(store: str, base_dir: Path) -> str:
    if "://" in store or Path(store).is_absolute():
        return store
    return str(base_dir / store)
