"""The one error type of the data layer."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Data could not be read or generated; the message names the file or config field at fault."""
