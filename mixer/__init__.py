"""mixer: deterministic, high-throughput data mixing and tokenization for LLM pretraining."""

from mixer.errors import InputError, MixerError, SpecError, StoreError
from mixer.mix.sampler import BlockRef, MixSampler
from mixer.mix.spec import MixSpec, PhaseSpec, SourceSpec
from mixer.store.reader import TokenStore

__all__ = [
    "BlockRef",
    "InputError",
    "MixSampler",
    "MixSpec",
    "MixerError",
    "PhaseSpec",
    "SourceSpec",
    "SpecError",
    "StoreError",
    "TokenStore",
]
__version__ = "0.1.0"
