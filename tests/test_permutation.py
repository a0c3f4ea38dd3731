from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.mix.permutation import MAX_ROUNDS, SMALL_DOMAIN, epoch_keys, permute, permute_one

SIZES = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 64, 97, 127, 128, 129, 1000, 1024, 4099, 65537]


def keys_of(seed: int = 0, source: str = "web", epoch: int = 0) -> np.ndarray:
    return np.array(epoch_keys(seed, source, epoch), dtype=np.uint64)


@pytest.mark.parametrize("n", SIZES)
def test_permutation_is_a_bijection_on_0_to_n(n):
    out = permute(np.arange(n), n, keys_of())
    assert np.array_equal(np.sort(out), np.arange(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(-(2**40), 2**40), epoch=st.integers(0, 10**9))
def test_permutation_is_a_bijection_for_any_size_and_key(n, seed, epoch):
    out = permute(np.arange(n), n, keys_of(seed, "s", epoch))
    assert np.array_equal(np.sort(out), np.arange(n))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4099])
def test_scalar_and_vectorized_forms_agree(n):
    keys = epoch_keys(7, "proofpile", 3)
    vectorized = permute(np.arange(n), n, np.array(keys, dtype=np.uint64))
    assert vectorized.tolist() == [permute_one(x, n, keys) for x in range(n)]


def test_per_element_keys_match_one_key_at_a_time():
    n = 500
    x = np.arange(n)
    epochs = x % 3
    keys = np.array([epoch_keys(1, "a", int(e)) for e in epochs], dtype=np.uint64).T
    mixed = permute(x, n, keys)
    for e in range(3):
        alone = permute(x[epochs == e], n, keys_of(1, "a", e))
        assert np.array_equal(mixed[epochs == e], alone)


def test_large_domains_are_supported_without_materializing():
    n = 250_000_000_000  # blocks of a 500T-token source: no array of this size is ever built
    keys = epoch_keys(0, "web", 0)
    picks = [permute_one(x, n, keys) for x in (0, 1, n - 1)]
    assert all(0 <= p < n for p in picks) and len(set(picks)) == 3
    assert permute(np.array([0, 1, n - 1]), n, keys_of()).tolist() == picks


def test_distinct_keys_give_distinct_orders():
    n = 1000
    base = permute(np.arange(n), n, keys_of(0, "web", 0))
    for other in (keys_of(1, "web", 0), keys_of(0, "code", 0), keys_of(0, "web", 1)):
        assert not np.array_equal(base, permute(np.arange(n), n, other))


def test_where_one_element_lands_is_uniform_over_epochs():
    n, epochs = 64, 6400
    landing = np.array([permute_one(0, n, epoch_keys(0, "web", e)) for e in range(epochs)])
    counts = np.bincount(landing, minlength=n)
    chi2 = ((counts - epochs / n) ** 2 / (epochs / n)).sum()
    assert chi2 < 120  # 63 degrees of freedom: a uniform shuffle exceeds this with p < 1e-5
    fixed = (permute(np.arange(10_000), 10_000, keys_of()) == np.arange(10_000)).sum()
    assert fixed < 10  # a random permutation has 1 fixed point on average


@pytest.mark.parametrize("n", [16, 23, SMALL_DOMAIN, 1000])
def test_where_two_elements_land_together_is_uniform_over_epochs(n):
    """Four Feistel rounds are not enough for tiny domains (chi2 ~ 1100 at n = 16), so small
    domains get more. Positions are bucketed 16 x 16 against the exact expectation."""
    epochs, buckets = 12_000, 16
    pairs = np.array(
        [[permute_one(x, n, epoch_keys(3, "pairs", e)) for x in (0, 1)] for e in range(epochs)]
    )
    cells = np.bincount((pairs * buckets // n) @ [buckets, 1], minlength=buckets**2)
    sizes = np.bincount(np.arange(n) * buckets // n, minlength=buckets)
    expected = np.outer(sizes, sizes) - np.diag(sizes)  # ordered pairs of distinct positions
    expected = (expected / expected.sum() * epochs).ravel()
    possible = expected > 0
    chi2 = ((cells[possible] - expected[possible]) ** 2 / expected[possible]).sum()
    assert chi2 < 340  # <= 255 degrees of freedom: p < 1e-5 for a uniform pair to exceed this


def test_epoch_keys_and_orders_are_pinned():
    # A change here changes every stream ever produced (the golden test catches it too).
    assert len(epoch_keys(1234, "web", 0)) == MAX_ROUNDS
    assert epoch_keys(1234, "web", 0)[0] == 11097653522108878361
    assert permute_one(0, 1000, epoch_keys(1234, "web", 0)) == 128


def test_epoch_keys_do_not_depend_on_the_python_hash_seed():
    code = "from mixer.mix.permutation import epoch_keys; print(epoch_keys(5, 'web', 2))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{epoch_keys(5, 'web', 2)}\n"}


@pytest.mark.parametrize("x", [-1, 10])
def test_indices_outside_the_domain_raise(x):
    with pytest.raises(IndexError):
        permute_one(x, 10, epoch_keys(0, "a", 0))
    with pytest.raises(IndexError):
        permute(np.array([x]), 10, keys_of())


@pytest.mark.parametrize("n", [256, 4099, 1_000_003, 2**32 + 7])
def test_round_tables_give_the_values_of_the_plain_rounds(n):
    """permute_one switches to precomputed round tables after a + b lookups of one (n, keys):
    the values before and after the switch are those of the vectorized form."""
    from mixer.mix import permutation

    keys = epoch_keys(11, f"tables-{n}", 2)
    a, b, _ = permutation._shape(n)
    xs = [(i * 7919) % n for i in range(min(n, 3 * (a + b)))] if a <= 4096 else list(range(300))
    got = [permute_one(x, n, keys) for x in xs]
    assert got == permute(np.array(xs), n, np.array(keys, dtype=np.uint64)).tolist()
    built = permutation._SEEN.get((n, keys))
    assert isinstance(built, permutation._Tables) == (a <= 4096 and a <= permutation.TABLE_SIDE)


def test_a_table_evicted_after_it_was_looked_up_falls_back_to_the_plain_rounds():
    """Another thread may evict (rounds = None) the table a lookup has just found: the lookup
    then computes the plain rounds, same value, instead of failing."""
    from mixer.mix import permutation

    n = 4099
    keys = epoch_keys(5, "evicted", 0)
    a, b, _ = permutation._shape(n)
    xs = list(range(a + b + 1))
    expected = permute(np.array(xs), n, np.array(keys, dtype=np.uint64)).tolist()
    assert [permute_one(x, n, keys) for x in xs] == expected  # builds the table
    table = permutation._SEEN[(n, keys)]
    assert isinstance(table, permutation._Tables)
    table.rounds = None  # what eviction does, after this lookup read `_SEEN`
    assert [permute_one(x, n, keys) for x in xs[:50]] == expected[:50]
