"""A small deterministic pseudo-random source for synthetic data.

Synthetic data needs reproducibility, not secrecy. The project keeps the standard
library's and NumPy's generators out of ``src/`` (privacy noise must come from
OpenDP only, and a hook checks), so everything here is derived from BLAKE2b over
(seed, labels, counter or key): the same seed gives the same numbers on every
platform and Python version, and any part of the data can be regenerated on its
own from its labels, without replaying the draws made before it.

Two interfaces:

* :class:`Stream` – a sequential generator for the slow path (planning schools,
  building answer pools): floats, ranges, weighted choices, normals;
* :class:`Keyed` – the hot path: one hash call turns a record key into 32
  uniform 16-bit integers, compared against integer thresholds from
  :func:`threshold` and :func:`cumulative`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from statistics import NormalDist
from typing import Final, TypeVar

__all__ = ["ONE", "Keyed", "Stream", "cumulative", "derive_key", "normal_table", "threshold"]

T = TypeVar("T")

#: the range of one hot-path value: values are integers in ``0 .. ONE - 1``
ONE: Final = 1 << 16

_PERSON: Final = b"fedscreen-synth"
_UNPACK_U64: Final = struct.Struct("<8Q").unpack
_UNPACK_U16: Final = struct.Struct("<32H").unpack
_UNIT: Final = 1.0 / (1 << 32)
_HALF_UNIT: Final = 0.5 / (1 << 32)


def derive_key(seed: int, *labels: str | int) -> bytes:
    """A 32-byte key naming one independent stream: the seed plus a path of labels."""
    text = "\x1f".join(str(part) for part in (seed, *labels))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=32, person=_PERSON).digest()


def threshold(p: float) -> int:
    """The integer cut for probability ``p``: ``value < threshold(p)`` has chance ``p``."""
    return min(ONE, max(0, round(p * ONE)))


def cumulative(weights: Sequence[float]) -> tuple[int, ...]:
    """Cuts for a weighted choice: ``bisect_right(cuts, value)`` picks index i with chance w_i/sum.

    The last cut is left out (it is always ``ONE``), so the result has ``len(weights) - 1`` cuts.
    """
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    cuts: list[int] = []
    running = 0.0
    for weight in weights[:-1]:
        running += weight
        cuts.append(threshold(running / total))
    return tuple(cuts)


def normal_table(size: int = 4096) -> tuple[float, ...]:
    """Standard-normal quantiles at ``(i + 0.5) / size``: index with a uniform to draw a normal."""
    dist = NormalDist()
    return tuple(dist.inv_cdf((i + 0.5) / size) for i in range(size))


class Keyed:
    """Counter-free hashing: the same record key always gives the same 32 values."""

    __slots__ = ("_prefix",)

    def __init__(self, seed: int, *labels: str | int) -> None:
        self._prefix = derive_key(seed, *labels)

    def values(self, key: bytes) -> tuple[int, ...]:
        """32 uniform integers in ``0 .. ONE - 1`` for ``key``."""
        # unkeyed BLAKE2b over prefix + key is the cheapest call (~0.5 µs); the prefix is
        # itself a hash of the seed, so streams with different labels never overlap
        return _UNPACK_U16(hashlib.blake2b(self._prefix + key, digest_size=64).digest())


class Stream:
    """A sequential pseudo-random stream: BLAKE2b(key, counter) blocks of eight 64-bit words."""

    __slots__ = ("_buffer", "_counter", "_key")

    def __init__(self, seed: int, *labels: str | int) -> None:
        self._key = derive_key(seed, *labels)
        self._counter = 0
        self._buffer: list[int] = []

    def u64(self) -> int:
        """A uniform integer in ``0 .. 2**64 - 1``."""
        if not self._buffer:
            block = hashlib.blake2b(
                self._counter.to_bytes(8, "little"), key=self._key, digest_size=64
            ).digest()
            self._counter += 1
            self._buffer = list(_UNPACK_U64(block))
        return self._buffer.pop()

    def random(self) -> float:
        """A uniform float in ``[0, 1)`` with 53 random bits."""
        return (self.u64() >> 11) * (1.0 / (1 << 53))

    def floats(self, n: int) -> list[float]:
        """``n`` uniform floats in ``(0, 1)`` (never 0: safe under log), drawn in bulk."""
        # one SHAKE-256 call for the lot: ~30x cheaper than n calls to ``random``
        raw = hashlib.shake_256(self._key + b"bulk" + self._counter.to_bytes(8, "little"))
        self._counter += 1
        words = struct.unpack(f"<{n}I", raw.digest(4 * n))
        # bound float methods keep the scaling in C: (w + 0.5) / 2**32
        return list(map(_HALF_UNIT.__add__, map(_UNIT.__mul__, words)))

    def uniform(self, low: float, high: float) -> float:
        """A uniform float in ``[low, high)``."""
        return low + (high - low) * self.random()

    def below(self, n: int) -> int:
        """A uniform integer in ``0 .. n - 1`` (multiply-shift; bias below 2**-40 for small n)."""
        if n <= 0:
            raise ValueError("n must be positive")
        return (self.u64() * n) >> 64

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in ``low .. high`` inclusive."""
        return low + self.below(high - low + 1)

    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.random() < p

    def choice(self, items: Sequence[T]) -> T:
        """One element of a non-empty sequence, uniformly."""
        return items[self.below(len(items))]

    def weighted(self, weights: Sequence[float]) -> int:
        """An index drawn with chance proportional to its weight."""
        target = self.random() * float(sum(weights))
        running = 0.0
        for index, weight in enumerate(weights):
            running += weight
            if target < running:
                return index
        return len(weights) - 1

    def normal(self, mean: float = 0.0, sd: float = 1.0) -> float:
        """A normal variate (Box–Muller; one of the pair is dropped for simplicity)."""
        u1 = 1.0 - self.random()  # in (0, 1]: log is finite
        u2 = self.random()
        return mean + sd * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def shuffle(self, items: list[T]) -> None:
        """Shuffle a list in place (Fisher–Yates)."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
