"""The mixing sampler: a pure function from a global block index to a block of one source.

How index i maps to a block, in O(1) time and with no per-block state:

1. Phase: the phase p whose block range holds i (phases are laid end to end).
2. Source: each phase's weights become exact fractions a_s / P (`rationalize`). One period of P
   slots holds each source s exactly a_s times, ordered so that every prefix of the period has
   |count_s(n) - n a_s / P| < 1 (`build_period`); the period repeats, and since counts return to
   exactly a_s at its end, the bound holds for every prefix of the phase.
3. Draw number: j = blocks of s drawn in earlier phases + (whole periods) * a_s + (earlier slots
   of s in this period): the j-th block the run draws from s, counted across phases.
4. Block: epoch e, k = divmod(j, n_s) with n_s = (num_tokens - 1) // seq_len, and the block is
   position k of a keyed permutation of [0, n_s) specific to (seed, source, e)
   (`mixer.mix.permutation`): every block once per epoch, each epoch in a fresh order.

Block k of a source is tokens [k * seq_len, k * seq_len + seq_len + 1) of its concatenated
stream, so a trainer takes x = b[:-1], y = b[1:].

The period is the only table: at most `MAX_PERIOD` slots per phase, whatever the run length.

Steering (`amended`, `skipping`, `fingerprint`): a change of weights at block n is a new phase
from n (`mixer.mix.spec.Amendment`), so every block before n is unchanged and every source's
draws continue where they were (step 3 counts draws across phases). Skipped ranges of blocks
are left out by the batch iterators but keep their place, so later blocks are unchanged. A
fingerprint of the plan before block n lets a resumed loader refuse a spec edited in the past.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

import numpy as np

from mixer.errors import MixerError, SpecError
from mixer.mix.permutation import epoch_keys, permute, permute_in_range, round_tables
from mixer.mix.spec import WEIGHT_TOLERANCE, Amendment, MixSpec, Phase, amend_plan
from mixer.store.reader import TokenStore

MAX_PERIOD = 1 << 20
READ_CHUNK_ROWS = 1024  # blocks located per vectorized call when reading batches


class BlockRef(NamedTuple):
    source: str
    block: int
    epoch: int
    phase: str


class BlockRefs(NamedTuple):
    """`locate_many` results: `source` and `phase` are ids into `source_names`/`phase_names`."""

    source: np.ndarray
    block: np.ndarray
    epoch: np.ndarray
    phase: np.ndarray


class Blocks(NamedTuple):
    """Blocks read from the stores: tokens (n, seq_len + 1), source ids (n,), and when asked
    `positions` (n, seq_len + 1, restarting at 0 at each document start) and `starts` (the same
    shape, True at column 0 and at each document start: what positions restart at)."""

    tokens: np.ndarray
    sources: np.ndarray
    positions: np.ndarray | None
    starts: np.ndarray | None = None


def restart_positions(starts: np.ndarray) -> np.ndarray:
    """Position ids counting from 0 at every True of `starts` (n, width; column 0 is a start)."""
    cols = np.arange(starts.shape[1])
    return cols - np.maximum.accumulate(np.where(starts, cols, 0), axis=1)


# ---------------------------------------------------------------------------- the period


def _simplest_fraction(weight: float, tolerance: Fraction) -> Fraction:
    """The first continued-fraction convergent within `tolerance` (relative) of `weight`.

    Never 0 for a positive weight. Recovers what users mean: 0.98 -> 49/50, 0.001 -> 1/1000.
    """
    x = Fraction(weight)
    num, den = x.numerator, x.denominator
    x_num, x_den, tol_num, tol_den = num, den, tolerance.numerator, tolerance.denominator
    p0, q0, p1, q1 = 0, 1, 1, 0
    while True:  # integers only: |p1/q1 - x| <= x tol, times x_den q1 tol_den
        term, rem = divmod(num, den)
        p0, q0, p1, q1 = p1, q1, term * p1 + p0, term * q1 + q0
        close = abs(p1 * x_den - x_num * q1) * tol_den <= x_num * q1 * tol_num
        if close and (p1 > 0 or x_num == 0):
            return Fraction(p1, q1)
        num, den = den, rem


def rationalize(weights: Sequence[float], where: str = "weights") -> tuple[int, ...]:
    """Integer slot counts a_s per source (their sum is the period P) for weights summing to ~1.

    When the simplest fractions of the weights sum to exactly 1 with a common denominator of at
    most MAX_PERIOD, they are used exactly: first within float precision (0.98 -> 49/50,
    0.999999 -> 999999/1000000, 2**-10 -> 1/1024), else within the spec's 1e-9 tolerance
    (0.3333333333 -> 1/3). Otherwise P = MAX_PERIOD and the normalized weights are rounded by
    largest remainder (each off by < 1/P); the report shows the weights used.
    """
    for tolerance in (Fraction(1, 10**15), Fraction(WEIGHT_TOLERANCE)):
        fractions = [_simplest_fraction(w, tolerance) for w in weights]
        period = math.lcm(*(f.denominator for f in fractions))
        if sum(fractions) == 1 and period <= MAX_PERIOD:
            return tuple(int(f * period) for f in fractions)
    exact = [Fraction(w) for w in weights]
    total = sum(exact)
    scaled = [x / total * MAX_PERIOD for x in exact]
    counts = [math.floor(x) for x in scaled]
    by_remainder = sorted(range(len(scaled)), key=lambda s: (counts[s] - scaled[s], s))
    for s in by_remainder[: MAX_PERIOD - sum(counts)]:
        counts[s] += 1
    for s, (weight, count) in enumerate(zip(weights, counts, strict=True)):
        if weight > 0 and count == 0:
            raise SpecError(
                f"{where}: weight {weight!r} of source #{s} is below 1/{MAX_PERIOD}, the finest "
                "the mixer holds next to these other weights"
            )
    return tuple(counts)


@lru_cache(maxsize=32)
def build_period(counts: tuple[int, ...]) -> np.ndarray:
    """Source of each slot of one period: source s in `counts[s]` slots, every prefix within 1.

    Pfair earliest-deadline-first: the j-th slot of s has the window
    [floor(j P / a_s), ceil((j + 1) P / a_s)); scheduling by earliest deadline among released
    slots meets every window (the windows are feasible since the weights sum to 1), and meeting
    them is exactly floor(n a_s / P) <= count_s(n) <= ceil(n a_s / P). Megatron's greedy
    "largest deficit first" does not guarantee this for more than two sources. The result is
    verified with exact integer arithmetic before use.
    """
    period, k = sum(counts), len(counts)
    release, keys = [], []
    for s, count in enumerate(counts):  # per source, so temporaries stay small
        j = np.arange(count, dtype=np.int64)
        release.append(j * period // count)
        keys.append(-((-(j + 1) * period) // count) * k + s)  # deadline first, then source
    release = np.concatenate(release)
    order = np.argsort(release, kind="stable")
    # memoryviews hand out plain ints without a list of P int objects (150 MB at P = 2**20)
    keys = memoryview(np.concatenate(keys)[order])
    released_at = memoryview(np.bincount(release, minlength=period))
    del release, order
    scheduled = np.empty(period, dtype=np.int64)
    out, heap, nxt = memoryview(scheduled), [], 0
    push, pop, pushpop = heapq.heappush, heapq.heappop, heapq.heappushpop
    for t in range(period):
        new = released_at[t]
        if new == 0:
            out[t] = pop(heap)
            continue
        for q in range(nxt, nxt + new - 1):
            push(heap, keys[q])
        last = keys[nxt + new - 1]
        out[t] = pushpop(heap, last) if heap else last
        nxt += new
    source_of = (scheduled % k).astype(np.uint16 if k <= 1 << 16 else np.uint32)
    del scheduled, keys
    _verify_period(source_of, counts)
    source_of.flags.writeable = False
    return source_of


def _verify_period(source_of: np.ndarray, counts: tuple[int, ...]) -> None:
    """Check |count_s(n) P - a_s n| < P for every source and prefix, at the extremes only."""
    period = len(source_of)
    slots = np.argsort(source_of, kind="stable")  # slots of source 0, then 1, ...
    start = 0
    for count in counts:
        j = np.arange(count, dtype=np.int64)
        mine = slots[start : start + count].astype(np.int64)
        start += count
        just_after = (j + 1) * period - count * (mine + 1)  # count_s jumps to j + 1
        just_before = count * mine - j * period  # still j, just before the jump
        if (just_after >= period).any() or (just_before >= period).any():
            raise AssertionError(f"period for counts {counts} breaks the prefix bound")


class PhaseTable:
    """One phase resolved against the stores: slot counts, the period and the draws it makes."""

    def __init__(self, phase: Phase, names: Sequence[str], drawn_before: Sequence[int]):
        self.name = phase.name
        self.start = phase.start
        self.blocks = phase.blocks
        self.targets = tuple(phase.weights[n] for n in names)
        self.counts = rationalize(self.targets, f"phase '{phase.name}'.weights")
        self.period = sum(self.counts)
        self.source_of = build_period(self.counts)
        self.slots = np.argsort(self.source_of, kind="stable")  # slots of source 0, then 1, ...
        self.slot_offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.rank_of = np.empty(self.period, dtype=np.uint32)
        self.rank_of[self.slots] = np.arange(self.period) - np.repeat(
            self.slot_offsets[:-1], self.counts
        )
        self.drawn_before = tuple(drawn_before)
        self.key = (
            phase.name,
            phase.start,
            phase.blocks,
            tuple(phase.weights.items()),
            self.drawn_before,
        )
        self.draws = tuple(self.count_before(s, self.blocks) for s in range(len(names)))
        # plain-int views for the scalar path (`MixSampler._locate`); numpy arrays for the
        # vectorized one (`draw_many`)
        self._source_view = memoryview(self.source_of)
        self._rank_view = memoryview(self.rank_of)
        self._counts_np = np.asarray(self.counts, dtype=np.int64)
        self._drawn_before_np = np.asarray(self.drawn_before, dtype=np.int64)

    @property
    def used_weights(self) -> tuple[float, ...]:
        return tuple(c / self.period for c in self.counts)

    def count_before(self, s: int, n: int) -> int:
        """Blocks of source s among this phase's first n blocks."""
        m, r = divmod(n, self.period)
        lo, hi = self.slot_offsets[s], self.slot_offsets[s + 1]
        return m * self.counts[s] + int(np.searchsorted(self.slots[lo:hi], r))

    def draw_many(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, r = np.divmod(n, self.period)
        s = self.source_of[r].astype(np.int64)
        return s, self._drawn_before_np[s] + m * self._counts_np[s] + self.rank_of[r]

    def index_of(self, s: int, j: int) -> int:
        """Phase-relative index of the j-th block this phase draws from source s."""
        m, q = divmod(j, self.counts[s])
        return m * self.period + int(self.slots[self.slot_offsets[s] + q])


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- reading blocks


class _SourceReader:
    """Copies blocks of one store, straight from plain ndarray views of its shards."""

    def __init__(self, store: TokenStore, seq_len: int, dtype: np.dtype):
        self.store = store
        self.dtype = dtype
        self.same_dtype = store.dtype.newbyteorder("<") == dtype  # a plain copy, no cast
        self.width = seq_len + 1
        self.seq_len = seq_len
        self.offsets = [int(x) for x in store.token_offsets]
        self.shards = store.shards  # mapped on first use, a bounded number at a time

    def slice(self, block: int) -> np.ndarray:
        """The block's tokens: a view into one shard, or a new array when it spans two."""
        start, offsets, width = block * self.seq_len, self.offsets, self.width
        shard = bisect_right(offsets, start) - 1
        if start + width <= offsets[shard + 1]:
            lo = start - offsets[shard]
            return self.shards[shard].mapped("tokens")[lo : lo + width]
        return self.store.tokens(start, start + width)

    def read(self, block: int) -> np.ndarray:
        """The block's tokens in `dtype`, a new array."""
        tokens = self.slice(block)
        return tokens.copy() if self.same_dtype else tokens.astype(self.dtype)

    def positions(self, block: int) -> np.ndarray:
        """Position ids that restart at 0 at each document start inside the block."""
        return restart_positions(self.starts_many(np.array([block], dtype=np.int64)))[0]

    def starts_many(self, blocks: np.ndarray) -> np.ndarray:
        """(len(blocks), seq_len + 1) bools, True at column 0 and at each document start: one
        search of a shard's document index for all the blocks inside that shard; a block
        spanning shards asks the store for its document starts."""
        start = blocks * self.seq_len
        starts = np.zeros((len(blocks), self.width), dtype=bool)
        starts[:, 0] = True  # a block starts a segment whether or not a document starts there
        offsets = self.store.token_offsets
        shard = np.searchsorted(offsets, start, side="right") - 1
        inside = start + self.width <= offsets[np.minimum(shard + 1, len(offsets) - 1)]
        size = self.store.dtype.itemsize
        for s in np.unique(shard[inside]).tolist():
            rows = np.flatnonzero(inside & (shard == s))
            pointers = self.shards[s].index.pointers
            first = start[rows] - int(offsets[s])
            lo = np.searchsorted(pointers, first * size, side="left")
            hi = np.searchsorted(pointers, (first + self.width) * size, side="left")
            count = hi - lo
            # the documents lo..hi - 1 of each row, flattened
            doc = np.arange(count.sum()) + np.repeat(lo - np.cumsum(count) + count, count)
            cols = np.asarray(pointers[doc]) // size - np.repeat(first, count)
            starts[np.repeat(rows, count), cols] = True
        for r in np.flatnonzero(~inside).tolist():
            begin = int(start[r])
            starts[r, self.store.document_starts(begin, begin + self.width) - begin] = True
        return starts


# ---------------------------------------------------------------------------- the sampler


class MixSampler:
    """Opens the stores of a spec and maps global block indices to blocks, statelessly.

    Same spec and stores give the same stream on any machine and world size.

    Parameters: `spec`, the mix (`mixer.mix.spec.MixSpec`); `stores`, already-open stores by
    source name (tests, caches of remote stores), else each source's `store` is opened;
    `verify=True` recomputes every checksum and index first (opening alone checks manifests and
    file sizes; verifying reads every byte: do it once per new store, not per job);
    `amendments`, weight changes from a block on (`amended`); `skip_blocks`, [start, stop)
    block ranges consumed but not served (`skipping`).
    """

    def __init__(
        self,
        spec: MixSpec,
        stores: Mapping[str, TokenStore] | None = None,
        verify: bool = False,
        amendments: Iterable[Amendment] = (),
        skip_blocks: Iterable[tuple[int, int]] = (),
        _tables: Iterable[PhaseTable] = (),
        _plan: tuple[tuple[Phase, ...], int] | None = None,
    ):
        self.spec = spec
        self.amendments = tuple(amendments)
        names = tuple(s.name for s in spec.sources)
        # `_with` hands over a plan that already holds the first `applied` amendments
        plan, applied = _plan if _plan is not None else (spec.plan, 0)
        self.plan = amend_plan(plan, self.amendments[applied:], names)
        self.skip_blocks = _merge_ranges([*spec.skip_blocks, *skip_blocks], spec.num_blocks)
        self.seq_len = spec.seq_len
        self.source_names = tuple(s.name for s in spec.sources)
        self.stores = tuple(
            stores[s.name] if stores is not None else TokenStore.open(s.store) for s in spec.sources
        )
        if verify:
            for store in self.stores:
                store.verify()
        self._check_stores()
        self.source_blocks = tuple((st.num_tokens - 1) // self.seq_len for st in self.stores)
        self.dtype = np.result_type(*(st.dtype for st in self.stores))
        tables, drawn = [], [0] * len(self.source_names)
        known = {t.key: t for t in _tables}  # an amended sampler reuses the unchanged phases
        for phase in self.plan:
            key = (
                phase.name,
                phase.start,
                phase.blocks,
                tuple(phase.weights.items()),
                tuple(drawn),
            )
            tables.append(known.get(key) or PhaseTable(phase, self.source_names, drawn))
            drawn = [d + n for d, n in zip(drawn, tables[-1].draws, strict=True)]
        self.phases = tuple(tables)
        self.phase_names = tuple(t.name for t in self.phases)
        self.draws = tuple(drawn)  # blocks drawn from each source over the whole run
        self._starts = [t.start for t in self.phases]
        self._len = spec.num_blocks
        self._check_repeats()
        self._readers = tuple(_SourceReader(st, self.seq_len, self.dtype) for st in self.stores)
        self._source_blocks_np = np.asarray(self.source_blocks, dtype=np.int64)
        self._phased = len(self.phases) > 1
        self._draw_consts = [
            (t.start, t.period, t._source_view, t._rank_view, t.drawn_before, t.counts)
            for t in self.phases
        ]
        self._perms: list[tuple[int, tuple[int, ...], Any]] = [(-1, (), None)] * len(
            self.source_names
        )

    def __reduce__(self) -> tuple:
        """Pickle (DataLoader workers under spawn) as the spec and store paths, reopened on load:
        never the memory maps, which would copy the data."""
        roots = {n: str(st.root) for n, st in zip(self.source_names, self.stores, strict=True)}
        return _reopen, (self.spec, roots, self.amendments, self.skip_blocks)

    def _check_stores(self) -> None:
        first, sha0 = self.source_names[0], self.stores[0].tokenizer_sha256
        seen: dict[tuple[str, str], str] = {}
        for name, store in zip(self.source_names, self.stores, strict=True):
            # max_repeats and epochs count per source: one store under two names would get two
            # budgets (and two independent orders of the same blocks)
            for key in (("path", os.path.realpath(store.root)), ("content", store.identity)):
                other = seen.setdefault(key, name)
                if other != name:
                    raise SpecError(
                        f"source '{name}'.store: the same store as source '{other}' (same "
                        f"{'directory' if key[0] == 'path' else 'manifest'}); list a store "
                        "once and give it the combined weight"
                    )
        for name, store in zip(self.source_names, self.stores, strict=True):
            if store.tokenizer_sha256 != sha0:
                raise SpecError(
                    f"source '{name}'.store: tokenizer sha256 {store.tokenizer_sha256[:12]}… "
                    f"differs from source '{first}' ({sha0[:12]}…); a mix needs one tokenizer"
                )
            if store.num_tokens < self.seq_len + 1:
                raise SpecError(
                    f"source '{name}'.store: {store.num_tokens} tokens is too small for one "
                    f"block of seq_len {self.seq_len} (needs {self.seq_len + 1})"
                )

    def _check_repeats(self) -> None:
        for source, drawn, n in zip(self.spec.sources, self.draws, self.source_blocks, strict=True):
            limit = source.max_repeats
            if limit is not None and drawn > limit * n:
                fits = math.floor(limit * n / self._len * 1e6) / 1e6
                raise SpecError(
                    f"source '{source.name}'.max_repeats: {limit}, but the plan draws {drawn} "
                    f"blocks of its {n}, {drawn / n:.1f} epochs, so it needs "
                    f"{-(-drawn // n)}; the largest fraction of the stream that fits is {fits:g}"
                )

    # -- the mapping
    def __len__(self) -> int:
        return self._len

    def _locate(self, i: int) -> tuple[int, int, int, int]:
        """(source id, block, epoch, phase id) of global block i.

        The scalar path (`__getitem__`, `get`, `locate`, `provenance`), in plain ints: the
        phase's draw (`draw_many` for one index) and, once a source epoch's round tables are
        built, their rounds (`permute_in_range`'s) inline, with each phase's constants in one
        tuple: a lookup is a few dozen Python operations, and a call, attribute or dict lookup
        less is measurable (BENCHMARKS.md, "Sampler"). Tested against `locate_many`."""
        if i.__class__ is not int:
            i = int(i)
        if not 0 <= i < self._len:
            if not -self._len <= i < 0:
                raise IndexError(f"block index {i} outside [0, {self._len})")
            i += self._len
        p = bisect_right(self._starts, i) - 1 if self._phased else 0
        start, period, source_of, rank_of, drawn_before, counts = self._draw_consts[p]
        m, r = divmod(i - start, period)
        s = source_of[r]
        n = self.source_blocks[s]
        epoch, k = divmod(drawn_before[s] + m * counts[s] + rank_of[r], n)
        cached = self._perms[s]  # (epoch, keys, tables or None): replaced whole, threads share it
        if cached[0] != epoch or cached[2] is None or (rounds := cached[2].rounds) is None:
            return s, self._permute(s, epoch, k), epoch, p
        a, b, t0, t1, t2, t3 = rounds
        while True:
            hi, lo = divmod(k, b)
            hi, lo = lo, (hi + t0[lo]) % a
            hi, lo = lo, (hi + t1[lo]) % b
            hi, lo = lo, (hi + t2[lo]) % a
            k = lo * b + (hi + t3[lo]) % b
            if k < n:
                return s, k, epoch, p

    def _permute(self, s: int, epoch: int, k: int) -> int:
        """Position k of source s's permutation in `epoch` through `permute_in_range`: the
        first lookup of an epoch, and every lookup of one without (or before) round tables."""
        cached, n = self._perms[s], self.source_blocks[s]
        if cached[0] == epoch:
            keys = cached[1]
        else:
            keys = epoch_keys(self.spec.seed, self.source_names[s], epoch)
        block = permute_in_range(k, n, keys)
        self._perms[s] = (epoch, keys, round_tables(n, keys))
        return block

    def locate(self, i: int) -> BlockRef:
        """Which block of which source is global block i."""
        s, block, epoch, p = self._locate(i)
        return BlockRef(self.source_names[s], block, epoch, self.phase_names[p])

    def locate_many(self, indices: Iterable[int] | np.ndarray) -> BlockRefs:
        """Vectorized `locate` for indices in [0, len)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(f"block indices outside [0, {self._len})")
        phase = np.searchsorted(self._starts, idx, side="right") - 1
        source = np.empty(idx.shape, dtype=np.int64)
        draw = np.empty(idx.shape, dtype=np.int64)
        if len(self.phases) == 1:
            source[...], draw[...] = self.phases[0].draw_many(idx)
        else:
            for p, table in enumerate(self.phases):
                sel = phase == p
                if sel.any():
                    source[sel], draw[sel] = table.draw_many(idx[sel] - table.start)
        n = self._source_blocks_np[source]
        epoch, k = np.divmod(draw, n)
        block = np.empty(idx.shape, dtype=np.int64)
        for s in np.unique(source).tolist():
            sel = source == s
            epochs, inverse = np.unique(epoch[sel], return_inverse=True)
            name = self.source_names[s]
            keys = np.array(
                [epoch_keys(self.spec.seed, name, e) for e in epochs.tolist()], dtype=np.uint64
            )
            block[sel] = permute(k[sel], self.source_blocks[s], keys.T[:, inverse])
        return BlockRefs(source, block, epoch, phase)

    # -- counts, for reports and checks
    def source_counts(self, stops: Iterable[int] | np.ndarray) -> np.ndarray:
        """(len(stops), sources) array: blocks of each source among global blocks [0, stop)."""
        stops = np.asarray(stops, dtype=np.int64)
        if stops.size and (stops.min() < 0 or stops.max() > self._len):
            raise IndexError(f"stops outside [0, {self._len}]")
        phase = np.maximum(np.searchsorted(self._starts, stops, side="right") - 1, 0)
        out = np.zeros((len(stops), len(self.source_names)), dtype=np.int64)
        for p, table in enumerate(self.phases):
            sel = phase == p
            if not sel.any():
                continue
            m, r = np.divmod(stops[sel] - table.start, table.period)
            for s, count in enumerate(table.counts):
                slots = table.slots[table.slot_offsets[s] : table.slot_offsets[s + 1]]
                out[sel, s] = table.drawn_before[s] + m * count + np.searchsorted(slots, r)
        return out

    def index_of_draw(self, source: str, j: int) -> int:
        """Global index of the j-th block the run draws from `source` (inverse of `locate`)."""
        s = self.source_names.index(source)
        if not 0 <= j < self.draws[s]:
            raise IndexError(f"draw {j} of source {source!r} outside [0, {self.draws[s]})")
        for table in self.phases:
            if j < table.drawn_before[s] + table.draws[s]:
                return table.start + table.index_of(s, j - table.drawn_before[s])
        raise AssertionError("unreachable: draws add up over phases")

    # -- steering
    def amended(self, weights: Mapping[str, float], at_block: int) -> MixSampler:
        """A sampler that mixes by `weights` from global block `at_block` to the end of the
        phase that block falls in; blocks before it are unchanged and every source's draws
        continue (`Amendment`). Refused (SpecError) when the new plan breaks `max_repeats`."""
        amendment = Amendment(at_block, weights)
        return self._with(amendments=(*self.amendments, amendment))

    def weight_caps(self, at_block: int) -> dict[str, float]:
        """Per source, the largest weight an amendment at `at_block` may give it without
        breaking its `max_repeats` (1.0 for sources without one); the online policies use it."""
        p = bisect_right(self._starts, at_block) - 1
        table = self.phases[p]
        span = table.start + table.blocks - at_block
        before = self.source_counts([at_block])[0]
        caps = {}
        for s, source in enumerate(self.spec.sources):
            if source.max_repeats is None:
                caps[source.name] = 1.0
                continue
            after = sum(t.draws[s] for t in self.phases[p + 1 :])
            room = source.max_repeats * self.source_blocks[s] - int(before[s]) - after - 1
            caps[source.name] = min(1.0, max(0.0, room / span))
        return caps

    def skipping(self, start_block: int, stop_block: int) -> MixSampler:
        """A sampler whose batch iterators leave out global blocks [start_block, stop_block).

        The blocks keep their place in the stream (consumed, not re-drawn): every other block
        is unchanged. A global batch that holds any skipped block is skipped whole."""
        return self._with(skip_blocks=(*self.skip_blocks, (start_block, stop_block)))

    def unsteered(self) -> MixSampler:
        """This sampler without amendments or skips beyond the spec's (the same stores)."""
        if not self.amendments and self.skip_blocks == self.spec.skip_blocks:
            return self
        return self._with(amendments=(), skip_blocks=())

    def _with(self, **changes: Any) -> MixSampler:
        args = {"amendments": self.amendments, "skip_blocks": self.skip_blocks, **changes}
        stores = dict(zip(self.source_names, self.stores, strict=True))
        kept = args["amendments"][: len(self.amendments)] == self.amendments
        plan = (self.plan, len(self.amendments)) if kept else None
        return MixSampler(self.spec, stores, **args, _tables=self.phases, _plan=plan)

    def is_skipped(self, start: int, stop: int) -> bool:
        """Whether any global block in [start, stop) lies in a skipped range."""
        return any(lo < stop and start < hi for lo, hi in self.skip_blocks)

    def skipped_steps(self, global_batch_size: int) -> tuple[tuple[int, int], ...]:
        """Global step ranges [a, b) that hold a skipped block, sorted and disjoint."""
        g = global_batch_size
        steps = [(lo // g, min(-(-hi // g), self.num_batches(g))) for lo, hi in self.skip_blocks]
        return _merge_ranges([(a, b) for a, b in steps if a < b], self.num_batches(g))

    def batch_steps(self, global_batch_size: int, start_step: int = 0) -> Iterator[int]:
        """Global steps from `start_step` on that hold no skipped block, in order."""
        step = start_step
        for a, b in self.skipped_steps(global_batch_size):
            if step < a:
                yield from range(step, a)
            step = max(step, b)
        yield from range(step, self.num_batches(global_batch_size))

    def num_batch_steps(self, global_batch_size: int, start_step: int = 0) -> int:
        """How many steps `batch_steps` yields."""
        left = max(0, self.num_batches(global_batch_size) - start_step)
        skipped = self.skipped_steps(global_batch_size)
        return left - sum(max(0, b - max(a, start_step)) for a, b in skipped)

    def fingerprint(self, stop_block: int) -> dict[str, str]:
        """What blocks [0, stop_block) depend on, hashed: `plan` (seed, seq_len, sources and
        their sizes, and each phase's range and exact weights up to there) and `stores` (the
        shards' sha256). Equal fingerprints mean the same blocks before `stop_block`; phase
        names and anything after `stop_block` are left out, so a spec may change its future."""
        stop = max(0, min(int(stop_block), self._len))
        phases = [
            [t.start, min(t.blocks, stop - t.start), list(t.counts)]
            for t in self.phases
            if t.start < stop
        ]
        plan = {
            "seed": self.spec.seed,
            "seq_len": self.seq_len,
            "sources": [list(x) for x in zip(self.source_names, self.source_blocks, strict=True)],
            "phases": phases,
        }
        return {"plan": _digest(plan), "stores": self._stores_digest}

    @cached_property
    def _stores_digest(self) -> str:
        return _digest(
            [
                [str(e.get("bin_sha256", e.get("tokens"))) for e in st.manifest["shards"]]
                for st in self.stores
            ]
        )

    def check_fingerprint(self, expected: Mapping[str, str], stop_block: int, what: str) -> None:
        """Refuse, in one line, a plan or stores that differ from `expected` before `stop_block`
        (`what` names the point, e.g. "step 1200")."""
        actual = self.fingerprint(stop_block)
        for key, meaning in (
            ("plan", "the spec's plan (weights, phases, seed, seq_len or store sizes)"),
            ("stores", "the stores' contents"),
        ):
            if key in expected and expected[key] != actual[key]:
                raise MixerError(
                    f"fingerprint: {meaning} before {what} differs from the checkpoint's "
                    f"({actual[key]} != {expected[key]}): resuming would change data already "
                    f"trained on; restore the original, and change the mix only from {what} on"
                )

    # -- provenance
    def provenance(self, i: int) -> list[dict[str, Any]]:
        """Where global block i came from: one entry per document piece in the block, in order.

        Each has `source`, `document` (index in the source's store), `input` and `record`
        (`TokenStore.origin`: None for stores written without provenance), `start`/`stop` (the
        piece's token offsets within the block's seq_len + 1 tokens) and `offset` (where the
        piece starts within its document)."""
        s, block, _, _ = self._locate(i)
        store, name = self.stores[s], self.source_names[s]
        first = block * self.seq_len
        last = first + self.seq_len + 1
        pieces = []
        for document, begin, end in store.documents_at(first, last):
            origin = store.origin(document)
            pieces.append(
                {
                    "source": name,
                    "document": document,
                    "input": None if origin is None else origin[0],
                    "record": None if origin is None else origin[1],
                    "start": max(begin, first) - first,
                    "stop": min(end, last) - first,
                    "offset": max(begin, first) - begin,
                }
            )
        return pieces

    # -- tokens
    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens of global block i: `seq_len + 1` ids in the stores' dtype, a new array."""
        s, block, _, _ = self._locate(i)
        return self._readers[s].read(block)

    def get(self, i: int, positions: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Tokens of block i, and with `positions` also ids restarting at each document start."""
        if not positions:
            return self[i]
        s, block, _, _ = self._locate(i)
        reader = self._readers[s]
        return reader.read(block), reader.positions(block)

    def read_many(
        self, indices: Iterable[int] | np.ndarray, positions: bool = False, starts: bool = False
    ) -> Blocks:
        """Blocks of many global indices at once (the loaders' path); with `positions` their
        positions and document starts, with `starts` only the starts (the cheaper half)."""
        refs = self.locate_many(indices)
        rows = list(zip(refs.source.tolist(), refs.block.tolist(), strict=True))
        tokens = np.empty((len(rows), self.seq_len + 1), dtype=self.dtype)
        readers = self._readers
        for row, (s, block) in enumerate(rows):
            tokens[row] = readers[s].slice(block)
        if not (positions or starts):
            return Blocks(tokens, refs.source, None)
        found = np.empty(tokens.shape, dtype=bool)
        for s in np.unique(refs.source).tolist():
            sel = refs.source == s
            found[sel] = readers[s].starts_many(refs.block[sel])
        return Blocks(tokens, refs.source, restart_positions(found) if positions else None, found)

    # -- batches
    def num_batches(self, global_batch_size: int) -> int:
        """Whole global batches in the stream; a trailing partial batch is dropped."""
        return self._len // global_batch_size

    def read_batches(
        self,
        batch_size: int,
        steps: Iterable[int],
        rank: int = 0,
        world_size: int = 1,
        positions: bool = False,
    ) -> Iterator[Blocks]:
        """This rank's slice of the given global batches, located in chunks to amortize numpy.

        `batch_size`: blocks per rank; global batch g is blocks [g G, (g + 1) G) with
        G = batch_size * world_size, of which `rank` takes the rank-th contiguous slice.
        `steps`: the global batch numbers to read, in any order (each in
        [0, num_batches(G))). `positions`: also return positions restarting at each document.
        """
        check_geometry(self.spec, batch_size, rank, world_size)
        width = batch_size * world_size
        per_chunk = max(1, READ_CHUNK_ROWS // batch_size)
        steps = iter(steps)
        while chunk := [s for _, s in zip(range(per_chunk), steps, strict=False)]:
            if min(chunk) < 0 or max(chunk) >= self.num_batches(width):
                raise IndexError(f"steps outside [0, {self.num_batches(width)})")
            first = np.asarray(chunk, dtype=np.int64)[:, None] * width + rank * batch_size
            blocks = self.read_many((first + np.arange(batch_size)).ravel(), positions)
            for b in range(len(chunk)):
                rows = slice(b * batch_size, (b + 1) * batch_size)
                yield Blocks(
                    blocks.tokens[rows],
                    blocks.sources[rows],
                    None if blocks.positions is None else blocks.positions[rows],
                    None if blocks.starts is None else blocks.starts[rows],
                )

    def batches(
        self, batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> Iterator[np.ndarray]:
        """(batch_size, seq_len + 1) arrays: global batch g is indices [g G, (g + 1) G),
        G = batch_size * world_size, and rank r takes its r-th contiguous slice; skipped
        batches (`skipping`, the spec's `skip_steps`) are left out."""
        steps = self.batch_steps(batch_size * world_size, start_step)
        for blocks in self.read_batches(batch_size, steps, rank, world_size):
            yield blocks.tokens


def check_rank(batch_size: int, rank: int, world_size: int) -> None:
    """The one check of a rank's batch geometry, for the sampler and every loader."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise MixerError(
            f"batch_size {batch_size}, rank {rank}, world_size {world_size}: need "
            "batch_size >= 1 and 0 <= rank < world_size"
        )


def check_global_batch(
    spec: MixSpec, global_batch_size: int, what: str, params: tuple[str, ...] = ()
) -> None:
    """Refuse a loader whose blocks per global step differ from the spec's `global_batch_size`.

    A spec that states one counts its `start_step` phases and `skip_steps` in steps of that
    many blocks; a loader stepping by another size would hand out the same blocks under other
    step numbers, so a phase would start (and a skipped range fall) at a step the user did not
    write. `what` names the loader's size, e.g. "batch_size 4 x world_size 2"; `params` the
    parameters it names (`MixerError.params`)."""
    stated = spec.global_batch_size
    if stated is not None and stated != global_batch_size:
        raise MixerError(
            f"{what} = {global_batch_size} blocks per step, but the spec's global_batch_size is "
            f"{stated}: its start_step phases and skip_steps would start at other steps; make "
            f"them equal (or give the spec total_tokens, start_tokens and no skip_steps)",
            params=params,
        )


def check_geometry(spec: MixSpec, batch_size: int, rank: int, world_size: int) -> None:
    """`check_rank`, and `check_global_batch` of batch_size x world_size: every loader's check."""
    check_rank(batch_size, rank, world_size)
    what = f"batch_size {batch_size} x world_size {world_size}"
    check_global_batch(spec, batch_size * world_size, what)


def _reopen(
    spec: MixSpec,
    roots: Mapping[str, str],
    amendments: tuple[Amendment, ...] = (),
    skip_blocks: tuple[tuple[int, int], ...] = (),
) -> MixSampler:
    stores = {name: TokenStore.open(root) for name, root in roots.items()}
    return MixSampler(spec, stores, amendments=amendments, skip_blocks=skip_blocks)


def _merge_ranges(ranges: Iterable[tuple[int, int]], end: int) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint [start, stop) ranges covering the union of `ranges`, checked in [0, end]."""
    merged: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges):
        if not 0 <= lo < hi <= end:
            raise MixerError(f"skip range [{lo}, {hi}) is not inside the run's [0, {end}) blocks")
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)
