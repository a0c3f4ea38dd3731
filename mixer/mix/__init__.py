"""Token stores -> one exact, resumable stream of training blocks: spec, sampler, loaders."""

from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import BlockRef, MixSampler
from mixer.mix.spec import MixSpec, PhaseSpec, SourceSpec

__all__ = ["BatchIterator", "BlockRef", "MixSampler", "MixSpec", "PhaseSpec", "SourceSpec"]
