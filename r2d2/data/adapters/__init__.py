"""Corpus adapters: each real distribution format in, manifest rows (or rejects) out."""

from r2d2.data.adapters.common import AdapterContext, FormatError, Reject
from r2d2.data.adapters.sources import ADAPTERS

__all__ = ["ADAPTERS", "AdapterContext", "FormatError", "Reject"]
