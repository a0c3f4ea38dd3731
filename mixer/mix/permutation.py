"""A stateless, keyed permutation of [0, n): the order in which one epoch visits a source's blocks.

`np.random.permutation(n)` needs O(n) memory and time before the first lookup; a source of 500B
tokens has ~250M blocks, so every rank would build a 2 GB array at start-up. Instead the
permutation is computed per index with a Feistel network.

The network works on Z_a x Z_b with a = ceil(sqrt(n)), b = ceil(n / a), adding the round function
modulo the side's size (the numeral-string Feistel of NIST SP 800-38G's FF1) instead of xoring
bit halves. The domain a*b exceeds n by less than a, so cycle-walking (apply the network again
until the value falls inside [0, n)) almost never takes a second pass; a power-of-two domain
would need up to 4 passes for unlucky n. The round function is the splitmix64/murmur3 finalizer
of one side xor a round key; keys come from blake2b of (seed, source, epoch), never Python's
salted `hash()`. Four rounds pass pairwise uniformity checks from a few hundred elements up;
smaller domains (sides under 16) get eight.

`permute` (numpy, vectorized) and `permute_one` (plain ints, for single lookups where numpy's
per-call overhead dominates) compute the same function; tests pin that.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from typing import Any

import numpy as np

MAX_ROUNDS = 8
SMALL_DOMAIN = 256  # below this many elements, use MAX_ROUNDS rounds instead of 4
_MASK64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


@lru_cache(maxsize=4096)
def epoch_keys(seed: int, source: str, epoch: int) -> tuple[int, ...]:
    """Round keys for one (seed, source, epoch): stable across machines and Python runs."""
    message = f"mixer.permutation.v1\x00{seed}\x00{source}\x00{epoch}".encode()
    digest = hashlib.blake2b(message, digest_size=8 * MAX_ROUNDS).digest()
    return tuple(int.from_bytes(digest[8 * r : 8 * r + 8], "little") for r in range(MAX_ROUNDS))


@lru_cache(maxsize=1024)
def _shape(n: int) -> tuple[int, int, int]:
    """Sides (a, b) with a*b >= n, and the number of rounds, for a domain of n elements."""
    a = math.isqrt(n - 1) + 1
    return a, -(-n // a), 4 if n >= SMALL_DOMAIN else MAX_ROUNDS


def permute_one(x: int, n: int, keys: tuple[int, ...]) -> int:
    """Position x of the permutation of [0, n) keyed by `keys` (from `epoch_keys`).

    Four-round domains (`SMALL_DOMAIN` elements or more) whose sides fit `TABLE_SIDE` switch to
    `_Tables` once the same (n, keys) has been asked `a + b` times: each round is then one list
    lookup instead of the 64-bit mixing in Python ints (BENCHMARKS.md, "Sampler"). Same values.
    """
    if not 0 <= x < n:
        raise IndexError(f"index {x} outside [0, {n})")
    return permute_in_range(x, n, keys)


def permute_in_range(x: int, n: int, keys: tuple[int, ...]) -> int:
    """`permute_one` without its range check, for callers whose x is in [0, n) by construction
    (the sampler's divmod by n): single lookups are a few hundred ns, so the check counts."""
    seen = _SEEN.get((n, keys))
    if seen.__class__ is not _Tables:
        a, b, rounds = _shape(n)
        if rounds != 4 or a > TABLE_SIDE:
            return _permute_loop(x, n, keys[:rounds], a, b)
        uses = (seen or 0) + 1
        if uses < a + b:
            _SEEN[(n, keys)] = uses
            if len(_SEEN) > _SEEN_MAX:
                _SEEN.pop(next(iter(_SEEN)))
            return _permute_loop(x, n, keys[:4], a, b)
        seen = _SEEN[(n, keys)] = _Tables(n, keys, a, b)
        _TABLES.append(((n, keys), seen))
        while len(_TABLES) > _TABLES_MAX:  # the oldest table goes back to a counter
            key, old = _TABLES.pop(0)
            old.rounds = None  # callers holding it (`round_tables`) let go of it too
            if _SEEN.get(key) is old:
                _SEEN[key] = 0
    rounds = seen.rounds
    if rounds is None:  # evicted by another thread since `seen` was looked up
        a, b, _ = _shape(n)
        return _permute_loop(x, n, keys[:4], a, b)
    a, b, t0, t1, t2, t3 = rounds
    while True:
        hi, lo = divmod(x, b)
        hi, lo = lo, (hi + t0[lo]) % a
        hi, lo = lo, (hi + t1[lo]) % b
        hi, lo = lo, (hi + t2[lo]) % a
        x = lo * b + (hi + t3[lo]) % b
        if x < n:
            return x


def round_tables(n: int, keys: tuple[int, ...]) -> _Tables | None:
    """The round tables `permute_in_range` uses for (n, keys) once built, else None.

    A caller may keep it and run the rounds itself (as `permute_in_range` does) while its
    `rounds` is not None: eviction sets it to None, so the process never holds more than
    `_TABLES_MAX` tables in use."""
    seen = _SEEN.get((n, keys))
    return seen if seen.__class__ is _Tables else None


TABLE_SIDE = 1 << 16  # sides up to this (n up to 2^32 blocks) get round tables: <= 10 MB each
_TABLES_MAX = 16
_SEEN_MAX = 4096
_SEEN: dict[tuple[int, tuple[int, ...]], Any] = {}  # uses so far, or the _Tables once built
_TABLES: list[tuple[tuple[int, tuple[int, ...]], Any]] = []  # built tables, oldest first


class _Tables:
    """The sides (a, b) and four round functions of one (n, keys), each function reduced modulo
    the side it is added to.

    (hi + F(lo)) mod m = (hi + (F(lo) mod m)) mod m, so a lookup in round r's table replaces
    computing F; tables are built with `_mix`, the vectorized round function `permute` uses.
    """

    __slots__ = ("rounds",)

    def __init__(self, n: int, keys: tuple[int, ...], a: int, b: int):
        k = np.asarray(keys[:4], dtype=np.uint64)
        sides = (b, a, b, a)  # round r reads lo in [0, sides[r]) ...
        moduli = (a, b, a, b)  # ... and adds to a value modulo moduli[r]
        self.rounds = (a, b) + tuple(
            (_mix(np.arange(side, dtype=np.uint64) ^ k[r]) % np.uint64(m)).tolist()
            for r, (side, m) in enumerate(zip(sides, moduli, strict=True))
        )


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, wrapping modulo 2^64 like `permute_one`'s masks."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
    return z ^ (z >> np.uint64(31))


def _permute_loop(x: int, n: int, keys: tuple[int, ...], a: int, b: int) -> int:
    while True:
        hi, lo = divmod(x, b)
        m_hi, m_lo = a, b
        for k in keys:
            z = lo ^ k
            z = ((z ^ (z >> 30)) * _C1) & _MASK64
            z = ((z ^ (z >> 27)) * _C2) & _MASK64
            hi, lo = lo, (hi + (z ^ (z >> 31))) % m_hi  # exact: Python ints do not wrap
            m_hi, m_lo = m_lo, m_hi
        x = hi * b + lo
        if x < n:
            return x


def _rounds(x: np.ndarray, keys: np.ndarray, a: int, b: int) -> np.ndarray:
    hi, lo = np.divmod(x, np.uint64(b))
    m_hi, m_lo = np.uint64(a), np.uint64(b)
    for k in keys:
        z = lo ^ k
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
        hi, lo = lo, (hi + (z ^ (z >> np.uint64(31))) % m_hi) % m_hi  # reduce before adding
        m_hi, m_lo = m_lo, m_hi
    return hi * np.uint64(b) + lo


def permute(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """Vectorized `permute_one`: `keys` is (MAX_ROUNDS,) for one key or (MAX_ROUNDS, len(x))."""
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() >= n):
        raise IndexError(f"indices outside [0, {n})")
    a, b, rounds = _shape(n)
    keys = np.asarray(keys, dtype=np.uint64)[:rounds]
    per_element = keys.ndim == 2
    y = _rounds(x.astype(np.uint64), keys, a, b)
    outside = np.flatnonzero(y >= n)
    while outside.size:
        y[outside] = _rounds(y[outside], keys[:, outside] if per_element else keys, a, b)
        outside = outside[y[outside] >= n]
    return y.astype(np.int64)
