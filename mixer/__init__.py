"""mixer: deterministic, high-throughput data mixing and tokenization for LLM pretraining."""

from mixer.errors import InputError, MixerError, SpecError, StoreError
from mixer.store import TokenStore

__all__ = ["InputError", "MixerError", "SpecError", "StoreError", "TokenStore"]
__version__ = "0.1.0"
