"""A run's steering as data: the amendments and skipped ranges a loader applied to its sampler.

The loaders keep this in their `state_dict()` (JSON), next to a fingerprint of the plan before
the resume point; `apply_steering` rebuilds the same sampler from the original spec, so a
fresh loader (or `mixer explain --state`) sees exactly the mix the run trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from mixer.errors import MixerError, SpecError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import Amendment


def steering_state(sampler: MixSampler) -> dict[str, Any]:
    """{"amendments": [{at_block, weights}, ...], "skip_blocks": [[start, stop], ...]}."""
    return {
        "amendments": [a.to_dict() for a in sampler.amendments],
        "skip_blocks": [list(r) for r in sampler.skip_blocks],
    }


def apply_steering(sampler: MixSampler, state: Mapping[str, Any]) -> MixSampler:
    """The sampler of the original spec (`sampler.unsteered()`) with a saved steering applied."""
    if sampler.amendments:
        raise MixerError(
            "apply_steering: needs the sampler of the original spec, not an amended one"
        )
    amendments = state.get("amendments", [])
    skips = state.get("skip_blocks", [])
    if not isinstance(amendments, list) or not isinstance(skips, list):
        raise MixerError("steering state: amendments and skip_blocks must be lists")
    try:
        parsed = [Amendment.from_dict(a) for a in amendments]
        ranges = [(int(lo), int(hi)) for lo, hi in skips]
    except (SpecError, TypeError, ValueError) as e:
        raise MixerError(f"steering state: {e}") from None
    if not parsed and not ranges:
        return sampler
    stores = dict(zip(sampler.source_names, sampler.stores, strict=True))
    return MixSampler(sampler.spec, stores, amendments=parsed, skip_blocks=ranges)


def apply_state_file(sampler: MixSampler, path: str | os.PathLike) -> MixSampler:
    """`apply_steering` with a loader `state_dict()` saved as JSON (`mixer explain --state`)."""
    state = read_state_file(path)
    return apply_steering(sampler, state.get("steering", state))


def read_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A loader `state_dict()` (or its steering alone) saved as a JSON object."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        raise MixerError(f"state file {path}: not found") from None
    except json.JSONDecodeError as e:
        raise MixerError(f"state file {path}: not JSON ({e.msg})") from None
    if not isinstance(state, dict):
        raise MixerError(f"state file {path}: expected a JSON object (a loader state_dict)")
    return state


def keep_future_steering(
    saved: MixSampler, current: MixSampler, samples: int, step: int
) -> MixSampler:
    """`saved` (a checkpoint's steering) plus the amendments and skips of `current` it lacks,
    each of which must lie at or after block `samples` (the resume point, global step `step`):
    a change set before a state is loaded into the same loader or DataLoader worker copy."""
    extra = [a for a in current.amendments if a not in saved.amendments]
    skips = [r for r in current.skip_blocks if r not in saved.skip_blocks]
    early = [a.at_block for a in extra] + [lo for lo, _ in skips]
    if early and min(early) < samples:
        raise MixerError(
            f"set_weights/skip_steps: a change from block {min(early)} lies before the loaded "
            f"state's step {step} (block {samples}), which was trained without it; change the "
            f"mix only from step {step} on"
        )
    for a in extra:
        saved = saved.amended(a.weights, a.at_block)
    for lo, hi in skips:
        saved = saved.skipping(lo, hi)
    return saved
