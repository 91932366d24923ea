"""A failed trial's cause as one line, for the driver's progress lines and its closing summary.

The data layer's and the configs' own messages come through as they are (the same line the pre-flight checks give);
running out of memory, and a trial process or node that died, are named as such; anything else is its exception's
type and first line. The traceback stays in the trial's error.txt, which the line names: Tune's own printing of every
failed attempt's traceback is turned off (TUNE_PRINT_ALL_TRIAL_ERRORS, read when a Tune run starts).
"""
from __future__ import annotations

import os
from typing import Any

from sweeps.command import one_line

__all__ = ["failure_line", "trial_failure"]

os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")

# what torch's allocators (CPU, CUDA, MPS) and Ray's memory monitor say when memory runs out
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
OOM_HINT = "lower train.batch_size or the networks, or run fewer trials at once"


def _cause(error: BaseException) -> BaseException:
    """The trial's own exception inside Ray's wrappers (RayTaskError.cause, chained)."""
    seen = set()
    while getattr(error, "cause", None) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.cause
    return error


def failure_line(error: BaseException | None) -> str:
    """One line saying why a trial failed (see the module docstring)."""
    if error is None:
        return "no error recorded"
    from mist_core.config import ConfigError
    from mist_core.data.errors import DataError

    e = _cause(error)
    text = str(e).strip()
    first = one_line(text.splitlines()[0]) if text else ""
    if isinstance(e, (ConfigError, DataError)):
        return one_line(text)
    if isinstance(e, MemoryError) or any(s in text.lower() for s in OUT_OF_MEMORY):
        return f"out of memory: {type(e).__name__}: {first} ({OOM_HINT})"
    died = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("The actor died because")]
    if type(e).__name__ in ("ActorDiedError", "WorkerCrashedError", "NodeDiedError", "RayActorError"):
        return f"its process or its node died ({type(e).__name__}: {died[0] if died else first})"
    return f"{type(e).__name__}: {first}"


def trial_failure(trial: Any) -> str:
    """failure_line of a Tune trial's last error, read from the driver's local copy of it; its error.txt named."""
    error = None
    path = getattr(trial, "pickled_error_file", None)
    if path and os.path.isfile(path):
        try:
            import cloudpickle

            with open(path, "rb") as f:
                error = cloudpickle.load(f)
        except Exception:  # noqa: BLE001 - an unreadable pickle: the text file below still says it
            error = None
    where = getattr(trial, "error_file", None)
    line = failure_line(error) if error is not None else "see the Tune log"
    return f"{line} (traceback: {where})" if where else line
