"""Corpora -> token stores: inputs, readers, filters, encoders, and the job that runs them."""

from mixer.ingest.driver import tokenize
from mixer.ingest.job import TokenizeJob

__all__ = ["TokenizeJob", "tokenize"]
