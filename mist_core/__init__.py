"""mist-bench core: data, MIST, shared ops, metrics, the training loop and the method registry."""
from mist_core._runtime import tune_allocator

tune_allocator()

__version__ = "0.1.0"
