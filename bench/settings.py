"""What a benchmark run measures and how hard: one frozen Settings object every item reads.

`Settings.tiny_defaults()` shrinks everything to seconds (smoke scale, 1 thread, 1 warm-up step, 2 timed steps,
1 profiled step, tiny conv shapes, a 2-trial sweep of 1 s trials, 32-image data sets; the `authors` item keeps
its fixed configuration, only its step counts shrink); the test suite uses it.
One thread because a tiny run is a functional check: on a machine whose cores are busy with other work, torch's
thread pool oversubscribed with it makes tiny steps 10-50x slower.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Settings", "ConvShape", "DEFAULT_CONV_SHAPES", "TINY_CONV_SHAPES"]

# (N, C_in, C_out, H = W, kernel): the conv2d shapes of the peak microbenchmark
ConvShape = tuple[int, int, int, int, int]
DEFAULT_CONV_SHAPES: tuple[ConvShape, ...] = ((64, 64, 64, 64, 3), (32, 128, 128, 32, 3), (16, 256, 256, 16, 3))
TINY_CONV_SHAPES: tuple[ConvShape, ...] = ((4, 16, 16, 16, 3), (2, 32, 32, 8, 3))


@dataclass(frozen=True)
class Settings:
    scales: tuple[str, ...] = ("quick",)       # presets (mist_core.presets / each method's default_config)
    methods: tuple[str, ...] = ()              # () = every registered method (mist_core.registry.method_names)
    device: str = "cpu"                        # "cpu" or "cuda"
    threads: int | None = None                 # torch intra-op threads (None = OMP_NUM_THREADS, else torch's default)
    warmup: int = 3                            # untimed steps before timing
    repeats: int = 20                          # timed steps (or calls) per measurement
    dataset: str = "mnist_hard"                # the data every step benchmark trains on
    profile_steps: int = 3                     # MIST steps under torch.profiler (breakdown), averaged
    conv_shapes: tuple[ConvShape, ...] = DEFAULT_CONV_SHAPES
    sweep_method: str = "mist"
    sweep_scale: str = "smoke"
    sweep_trials: int | None = None            # None = 2 per core
    sweep_seconds: float = 10.0                # training seconds per sweep trial
    data_generators: tuple[str, ...] = ()      # () = every registered dataset that needs no user files
    data_images: int = 2000                    # training images generated per data measurement
    data_test_images: int = 16
    data_repeats: int = 3
    concurrency_seconds: float = 10.0          # measuring window of each concurrency level
    deadline: float | None = None              # Unix time: cases that would end after it are skipped, saying so
    tiny: bool = False

    @classmethod
    def tiny_defaults(cls) -> dict:
        """The overrides --tiny applies (explicit command-line values still win for methods and generators)."""
        return dict(scales=("smoke",), threads=1, warmup=1, repeats=2, profile_steps=1, conv_shapes=TINY_CONV_SHAPES,
                    sweep_trials=2, sweep_seconds=1.0, concurrency_seconds=2.0, data_images=32, data_test_images=4,
                    data_repeats=1, tiny=True)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict:
        return dataclasses.asdict(self)
