"""Stores at s3:// URLs: tokenize uploads manifest-last, readers go through a verified cache.

Runs against a moto S3 server started here. To run against a real endpoint instead, set
MIXER_TEST_S3_ENDPOINT (and MIXER_TEST_S3_BUCKET, an existing bucket the credentials in the
usual AWS_* variables can write; objects go under a fresh prefix per test).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zstandard

pytest.importorskip("s3fs")

from conftest import CORPUS  # noqa: E402

from mixer import MixerError, MixSampler, MixSpec, StoreError, TokenStore  # noqa: E402
from mixer.ingest import TokenizeJob, tokenize  # noqa: E402
from mixer.store import cache as store_cache  # noqa: E402
from mixer.store import remote  # noqa: E402
from mixer.store.format import MANIFEST

ENV_ENDPOINT = "MIXER_TEST_S3_ENDPOINT"
ENV_BUCKET = "MIXER_TEST_S3_BUCKET"


@pytest.fixture(scope="module")
def s3():
    """(storage_options, bucket) for an S3 endpoint: moto's, or the one named by the env."""
    import s3fs

    patch = pytest.MonkeyPatch()
    endpoint = os.environ.get(ENV_ENDPOINT)
    server = None
    if endpoint:
        bucket = os.environ.get(ENV_BUCKET) or pytest.skip(f"{ENV_BUCKET} is not set")
    else:
        moto_server = pytest.importorskip("moto.server")
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = "mixer-test"
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_ENDPOINT_URL", endpoint)  # for code paths given no storage_options
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**options)
    if server is not None:
        # moto keeps its buckets per process: another module's server (test_cluster imports
        # this fixture) may have made it already.
        fs.makedirs(bucket, exist_ok=True)
    yield options, bucket
    patch.undo()
    if server is not None:
        server.stop()


@pytest.fixture
def prefix(s3) -> str:
    return f"s3://{s3[1]}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3fs_(s3):
    import s3fs

    return s3fs.S3FileSystem(**s3[0])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(store_cache.CACHE_ENV, str(path))
    monkeypatch.setattr(remote, "RETRY_BASE_DELAY", 0.0)
    return path


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [CORPUS[int(rng.integers(len(CORPUS)))] + f" doc {i} " * (i % 7 + 1) for i in range(n)]


def jsonl(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in docs).encode()


def local_inputs(root: Path, files: int = 3) -> tuple[str, ...]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = root / f"part-{k}.jsonl"
        path.write_bytes(jsonl(texts(40, seed=k)))
        paths.append(str(path))
    return tuple(paths)


def one_task_each(inputs: list[str]) -> int:
    """A chunk size that keeps each of these similar files a task of its own: any two together
    pass it, so none is grouped with another (room for a small append)."""
    sizes = [os.path.getsize(p) for p in inputs]
    assert max(sizes) + 200 < 2 * min(sizes)
    return max(sizes) + 200


def job(tokenizer_path: str, inputs, out: str, options: dict | None = None) -> TokenizeJob:
    """One shard per local input file (the tests count shards and uploads per file)."""
    local = [p for p in inputs if "://" not in p]
    return TokenizeJob(
        inputs=tuple(inputs),
        tokenizer=tokenizer_path,
        out=out,
        workers=0,
        backend="hf",
        storage_options=options or {},
        **({"chunk_bytes": one_task_each(local)} if len(local) > 1 else {}),
    )


def documents(store: TokenStore) -> list[list[int]]:
    return [store.document(i).tolist() for i in range(store.num_documents)]


def test_tokenize_to_s3_then_open_through_the_cache_matches_a_local_run(
    tmp_path, tokenizer_path, s3, prefix, s3fs_, cache
):
    options = s3[0]
    inputs = local_inputs(tmp_path / "in")
    local = tmp_path / "local"
    tokenize(job(tokenizer_path, inputs, str(local)), progress=False)
    manifest = tokenize(job(tokenizer_path, inputs, prefix, options), progress=False)
    assert manifest["num_shards"] == 3
    assert not store_cache.staging_dir(prefix).exists()  # staged copy removed after the upload
    listed = sorted(p.rsplit("/", 1)[1] for p in s3fs_.ls(prefix.removeprefix("s3://")))
    assert listed == sorted(p.name for p in local.iterdir())

    store = TokenStore.open(prefix, storage_options=options)
    assert store.root == store_cache.cached_store_dir(prefix)
    assert store.root.is_relative_to(cache)
    for shard in store.shards:
        for path in (shard.bin_path, shard.idx_path):
            assert path.read_bytes() == (local / path.name).read_bytes()
    store.verify()
    assert documents(store) == documents(TokenStore.open(local))
    assert store.tokenizer_json() == Path(tokenizer_path).read_text()  # the copy came along

    # A rerun finds the finished store at the URL and does nothing.
    assert tokenize(job(tokenizer_path, inputs, prefix, options), progress=False) == manifest


def test_inputs_read_from_s3(tmp_path, tokenizer_path, s3, prefix, s3fs_):
    options = s3[0]
    docs = texts(60, seed=7)
    data = zstandard.ZstdCompressor().compress(jsonl(docs))
    url = f"{prefix}/in/corpus.jsonl.zst"
    s3fs_.pipe(url.removeprefix("s3://"), data)
    (tmp_path / "corpus.jsonl.zst").write_bytes(data)

    from_s3 = tmp_path / "from-s3"
    tokenize(job(tokenizer_path, [url], str(from_s3), options), progress=False)
    from_local = tmp_path / "from-local"
    tokenize(job(tokenizer_path, [str(tmp_path / "corpus.jsonl.zst")], str(from_local)), False)
    a, b = TokenStore.open(from_s3), TokenStore.open(from_local)
    assert a.num_documents == len(docs)
    assert documents(a) == documents(b)


class FlakyPuts:
    """A filesystem whose put_file calls go through `hook` first (to inject upload errors)."""

    def __init__(self, fs, hook):
        self._fs, self._hook = fs, hook

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def put_file(self, lpath, rpath, *args, **kwargs):
        self._hook(rpath)
        return self._fs.put_file(lpath, rpath, *args, **kwargs)


def inject_upload_errors(monkeypatch, hook) -> None:
    original = remote.filesystem

    def patched(url, storage_options):
        fs, root = original(url, storage_options)
        return FlakyPuts(fs, hook), root

    monkeypatch.setattr(remote, "filesystem", patched)


def test_manifest_is_uploaded_last_and_a_rerun_reuses_the_uploaded_shards(
    tmp_path, tokenizer_path, s3, prefix, s3fs_, monkeypatch, caplog
):
    options = s3[0]
    inputs = local_inputs(tmp_path / "in")
    uploaded: list[str] = []

    def fail_after_first_shard(rpath: str) -> None:
        if len(uploaded) == 4:  # shard-00000.bin, .idx, .rec, shard-00001.bin; then the link dies
            raise OSError("connection reset (injected)")
        uploaded.append(rpath)

    inject_upload_errors(monkeypatch, fail_after_first_shard)
    with pytest.raises(MixerError, match=rf"{prefix}/shard-00001\.idx: upload: failed after 5 at"):
        tokenize(job(tokenizer_path, inputs, prefix, options), progress=False)
    root = prefix.removeprefix("s3://")
    assert not s3fs_.exists(f"{root}/{MANIFEST}")
    with pytest.raises(StoreError, match="not a token store"):
        TokenStore.open(prefix, storage_options=options)
    # shard-00000 is complete at the URL (its done record came after its files); 00001 is not.
    s3fs_.invalidate_cache()
    records = sorted(p.rsplit("/", 1)[1] for p in s3fs_.ls(f"{root}/.mixer-partial"))
    assert records == ["shard-00000.json"]

    monkeypatch.undo()
    monkeypatch.setenv(store_cache.CACHE_ENV, str(tmp_path / "cache"))
    s3fs_.invalidate_cache()
    with caplog.at_level(logging.INFO, logger="mixer"):
        manifest = tokenize(job(tokenizer_path, inputs, prefix, options), progress=False)
    assert "(1 reused)" in caplog.text
    s3fs_.invalidate_cache()
    assert s3fs_.exists(f"{root}/{MANIFEST}") and not s3fs_.exists(f"{root}/.mixer-partial")
    assert not store_cache.staging_dir(prefix).exists()
    store = TokenStore.open(prefix, storage_options=options)
    store.verify()
    assert store.num_documents == manifest["num_documents"] == 120


def test_a_transient_upload_error_is_retried(tmp_path, tokenizer_path, s3, prefix, monkeypatch):
    failures: list[str] = []

    def once(rpath: str) -> None:
        if not failures:
            failures.append(rpath)
            raise ConnectionError("injected")

    inject_upload_errors(monkeypatch, once)
    inputs = local_inputs(tmp_path / "in", files=1)
    tokenize(job(tokenizer_path, inputs, prefix, s3[0]), progress=False)
    assert len(failures) == 1
    TokenStore.open(prefix, storage_options=s3[0]).verify()


def test_a_corrupted_shard_object_is_a_store_error_and_never_cached(
    tmp_path, tokenizer_path, s3, prefix, s3fs_
):
    options = s3[0]
    tokenize(job(tokenizer_path, local_inputs(tmp_path / "in"), prefix, options), False)
    key = f"{prefix.removeprefix('s3://')}/shard-00001.bin"
    data = bytearray(s3fs_.cat_file(key))
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    s3fs_.pipe(key, bytes(data))
    with pytest.raises(StoreError, match=r"shard-00001\.bin.*sha256"):
        TokenStore.open(prefix, storage_options=options)
    local = store_cache.cached_store_dir(prefix)
    assert not (local / "shard-00001.bin").exists()
    assert not (local / MANIFEST).exists()
    assert not [p for p in local.iterdir() if ".tmp-" in p.name]


def test_concurrent_readers_download_each_file_once(
    tmp_path, tokenizer_path, s3, prefix, monkeypatch
):
    options = s3[0]
    manifest = tokenize(job(tokenizer_path, local_inputs(tmp_path / "in"), prefix, options), False)
    calls: list[str] = []
    original = store_cache._download_checked

    def counting(fs, source, target, *args):
        calls.append(target.name)
        return original(fs, source, target, *args)

    monkeypatch.setattr(store_cache, "_download_checked", counting)
    barrier = threading.Barrier(2)
    stores: list[TokenStore] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            barrier.wait()
            stores.append(TokenStore.open(prefix, storage_options=options))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # .bin, .idx and .rec (provenance) of every shard, and the tokenizer's copy
    files = 3 * manifest["num_shards"] + 1
    assert sorted(calls) == sorted(set(calls)) and len(calls) == files
    assert documents(stores[0]) == documents(stores[1])
    TokenStore.open(prefix, storage_options=options)  # warm cache: nothing downloaded again
    assert len(calls) == files


def test_sampler_over_an_s3_store_matches_the_local_store(tmp_path, tokenizer_path, s3, prefix):
    inputs = local_inputs(tmp_path / "in")
    local = tmp_path / "local"
    tokenize(job(tokenizer_path, inputs, str(local)), progress=False)
    tokenize(job(tokenizer_path, inputs, prefix, s3[0]), progress=False)

    def spec(store: str) -> MixSpec:
        source = [{"name": "web", "store": store, "weight": 1.0}]
        return MixSpec.from_dict(
            {"seq_len": 16, "seed": 3, "total_tokens": 16 * 20, "source": source}
        )

    # No storage_options here: the endpoint comes from AWS_ENDPOINT_URL like in production.
    remote_mix, local_mix = MixSampler(spec(prefix)), MixSampler(spec(str(local)))
    for k in range(len(local_mix)):
        assert np.array_equal(remote_mix[k], local_mix[k])


def test_a_url_holding_another_jobs_store_is_refused(tmp_path, tokenizer_path, s3, prefix):
    tokenize(job(tokenizer_path, local_inputs(tmp_path / "a", 1), prefix, s3[0]), False)
    other = local_inputs(tmp_path / "b", 2)
    with pytest.raises(MixerError, match="other inputs or options"):
        tokenize(job(tokenizer_path, other, prefix, s3[0]), progress=False)


def test_an_interrupted_fetch_resumes_and_a_rebuilt_store_replaces_the_cached_copy(
    tmp_path, s3, prefix, monkeypatch
):
    from mixer.store.writer import write_store

    options = s3[0]
    first = write_store(tmp_path / "a", [[1, 2, 3], [4, 5], [6]], vocab_size=100, docs_per_shard=1)
    remote.upload_store(first, prefix, options)

    calls: list[str] = []
    original = store_cache._download_checked

    def dies_on_the_third(fs, source, target, *args):
        calls.append(target.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a reader killed mid-fetch
        return original(fs, source, target, *args)

    monkeypatch.setattr(store_cache, "_download_checked", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        TokenStore.open(prefix, storage_options=options)
    store = TokenStore.open(prefix, storage_options=options)
    assert documents(store) == [[1, 2, 3], [4, 5], [6]]
    assert len(calls) == 6 + 1  # the two finished files were not downloaded again

    second = write_store(tmp_path / "b", [[7, 8], [9]], vocab_size=100, docs_per_shard=1)
    remote.upload_store(second, prefix, options)
    for name in ("shard-00002.bin", "shard-00002.idx"):  # leftovers of the first build
        remote.filesystem(prefix, options)[0].rm_file(f"{prefix.removeprefix('s3://')}/{name}")
    store = TokenStore.open(prefix, storage_options=options)
    assert documents(store) == [[7, 8], [9]]
    assert not (store.root / "shard-00002.bin").exists()


# ---------------------------------------------------------------------------- endpoint faults
#
# A FaultProxy (tests/s3_fault_proxy.py) on 127.0.0.1 sits between mixer and the moto server.
# `faulty` storage options go through it with botocore and s3fs retrying nothing themselves, so
# each failed request is one failed attempt of mixer's `with_retries`: fault counts are exact
# and an endpoint that never recovers fails in well under a second. (With their defaults those
# layers retry each request up to 25 times first; see mixer.store.remote's docstring.)

PUT_NOT_MANIFEST = lambda method, path: method == "PUT" and MANIFEST not in path  # noqa: E731
PUT_MANIFEST = lambda method, path: method == "PUT" and MANIFEST in path  # noqa: E731
GET_BIN = lambda method, path: method == "GET" and ".bin" in path  # noqa: E731


@pytest.fixture
def proxy(s3):
    from s3_fault_proxy import FaultProxy

    endpoint = s3[0]["client_kwargs"]["endpoint_url"]
    if not endpoint.startswith("http://127.0.0.1:"):
        pytest.skip("fault injection runs in front of the local moto server only")
    running = FaultProxy(endpoint.removeprefix("http://"))
    yield running
    running.close()


@pytest.fixture
def faulty(proxy, monkeypatch) -> dict:
    """storage_options through the proxy; only mixer retries (3 attempts: s3fs sleeps 0.1 s
    after every failure even when it does not retry)."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr(remote, "RETRY_ATTEMPTS", 3)
    return {
        "client_kwargs": {"endpoint_url": proxy.url},
        "config_kwargs": {"retries": {"total_max_attempts": 1}},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_path) -> tuple[tuple[str, ...], Path]:
    """Inputs and the store a local `mixer tokenize` (`cli_tokenize`) makes of them: two files
    of two formats, so two tasks and two shards whatever the chunk size."""
    root = tmp_path_factory.mktemp("reference")
    plain, packed = local_inputs(root / "in", files=2)
    Path(packed + ".gz").write_bytes(gzip.compress(Path(packed).read_bytes(), mtime=0))
    Path(packed).unlink()
    inputs = (plain, packed + ".gz")
    store = str(root / "store")
    tokenize(TokenizeJob(inputs, tokenizer_path, store, workers=0, backend="hf"), progress=False)
    return inputs, root / "store"


def objects(fs, url: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    root = url.removeprefix("s3://")
    return {p.rsplit("/", 1)[1]: fs.cat_file(p) for p in fs.find(root)} if fs.exists(root) else {}


def files(directory: Path) -> dict[str, bytes]:
    """The store's files (cache bookkeeping such as .lock and .used left out)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


def cli_tokenize(inputs, tokenizer_path: str, out: str, options: dict) -> int:
    from mixer.cli import main

    argv = ["tokenize", *inputs, "-t", tokenizer_path, "-o", out, "--workers", "0"]
    argv += ["--backend", "hf", "--no-progress", "--storage-options", json.dumps(options)]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


def test_tokenize_to_s3_rides_out_an_endpoint_failing_for_a_while(
    reference, tokenizer_path, proxy, faulty, prefix, s3fs_
):
    inputs, local = reference
    # Two failures in a row (what 3 attempts absorb) on a shard file and on the manifest; "lost"
    # stores the manifest but loses the answer, so the retry writes it again.
    for mode, match in [("503", PUT_NOT_MANIFEST), ("reset", PUT_NOT_MANIFEST)]:
        proxy.fail(mode, times=1, match=match)
    for mode, match in [("500", PUT_MANIFEST), ("lost", PUT_MANIFEST)]:
        proxy.fail(mode, times=1, match=match)
    assert cli_tokenize(inputs, tokenizer_path, prefix, faulty) == 0
    assert [mode for _, _, mode in proxy.faulted()] == ["503", "reset", "500", "lost"]
    assert objects(s3fs_, prefix) == files(local)  # every object byte-identical, nothing else


def test_tokenize_to_an_endpoint_that_never_recovers_is_one_clear_error_and_publishes_nothing(
    reference, tokenizer_path, proxy, faulty, prefix, s3fs_, capsys
):
    inputs, local = reference
    proxy.fail("503", match=PUT_NOT_MANIFEST)
    started = time.monotonic()
    assert cli_tokenize(inputs, tokenizer_path, prefix, faulty) == 1
    assert time.monotonic() - started < 15
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(
        rf"mixer: error: {re.escape(prefix)}/\S+: upload: failed after "
        rf"{remote.RETRY_ATTEMPTS} attempts \(OSError: .*reduce your request rate.*\)",
        error,
    ), error
    assert MANIFEST not in objects(s3fs_, prefix)
    with pytest.raises(StoreError, match="not a token store"):
        TokenStore.open(prefix, storage_options=faulty)

    proxy.heal()  # the endpoint is back: a rerun finishes the job from the staged store
    assert cli_tokenize(inputs, tokenizer_path, prefix, faulty) == 0
    assert objects(s3fs_, prefix) == files(local)


def test_cache_fill_rides_out_dropped_connections_and_bodies_cut_short(
    reference, s3, proxy, faulty, prefix
):
    local = reference[1]
    remote.upload_store(local, prefix, s3[0])
    for shard, modes in [("00000", ["truncate", "reset"]), ("00001", ["503", "truncate"])]:
        for mode in modes:
            proxy.fail(mode, times=1, match=lambda m, p, s=shard: m == "GET" and f"{s}.bin" in p)
    store = TokenStore.open(prefix, storage_options=faulty)
    assert [mode for _, _, mode in proxy.faulted()] == ["truncate", "reset", "503", "truncate"]
    store.verify()
    assert files(store.root) == files(local)


def test_a_body_cut_short_every_time_is_a_clear_error_and_never_lands_in_the_cache(
    reference, s3, proxy, faulty, prefix
):
    local = reference[1]
    remote.upload_store(local, prefix, s3[0])
    proxy.fail("truncate", match=lambda method, path: method == "GET" and "00001.bin" in path)
    with pytest.raises(MixerError) as error:
        TokenStore.open(prefix, storage_options=faulty)
    assert str(error.value).startswith(
        f"{prefix}/shard-00001.bin: download: failed after {remote.RETRY_ATTEMPTS} attempts"
    )
    cached = store_cache.cached_store_dir(prefix)
    assert not (cached / "shard-00001.bin").exists()
    assert not (cached / MANIFEST).exists()
    assert not [p for p in cached.iterdir() if ".tmp-" in p.name]

    proxy.heal()
    store = TokenStore.open(prefix, storage_options=faulty)
    store.verify()
    assert files(store.root) == files(local)


def test_reading_from_an_endpoint_that_never_recovers_is_one_clear_error_within_seconds(
    reference, s3, proxy, faulty, prefix, monkeypatch, capsys
):
    import s3fs

    from mixer.cli import main

    remote.upload_store(reference[1], prefix, s3[0])
    proxy.fail("reset")
    # The CLI passes no storage_options: the endpoint and botocore's retries come from the env.
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    started = time.monotonic()
    try:
        with pytest.raises(SystemExit) as exited:
            main(["inspect", prefix])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert time.monotonic() - started < 15
    assert exited.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"mixer: error: {prefix}/{MANIFEST}: download: failed after {remote.RETRY_ATTEMPTS} att"
    )
    assert "\n" not in error
    assert len(proxy.faulted()) >= remote.RETRY_ATTEMPTS
    assert not (store_cache.cached_store_dir(prefix) / MANIFEST).exists()


@pytest.mark.parametrize("mode", ["truncate", "503"])
def test_with_default_retry_settings_a_short_fault_is_retried_below_mixer(
    mode, reference, s3, proxy, prefix, monkeypatch
):
    remote.upload_store(reference[1], prefix, s3[0])
    monkeypatch.setattr(remote, "RETRY_ATTEMPTS", 1)  # mixer itself does not retry here
    proxy.fail(mode, times=1, match=GET_BIN)
    store = TokenStore.open(prefix, storage_options={"client_kwargs": {"endpoint_url": proxy.url}})
    assert len(proxy.faulted()) == 1
    store.verify()


# ---------------------------------------------------------------------------- cache bound


@pytest.fixture(autouse=True)
def _release_held_stores():
    """This process holds every store it opened; let go at the end of each test."""
    yield
    with store_cache._pins_guard:
        handles = list(store_cache._pins.values())
        store_cache._pins.clear()
    for handle in handles:
        handle.close()


@pytest.fixture
def stores(tmp_path, s3, prefix) -> tuple[dict[str, str], dict[str, list], int]:
    """Three stores of one size at URLs a, b, c: their URLs, documents and size once cached."""
    from mixer.store.writer import write_store

    urls, docs, sizes = {}, {}, set()
    for seed, name in enumerate("abc"):
        rng = np.random.default_rng(seed)
        # Shards much larger than the manifest, so a store's bytes are not mostly its manifest.
        docs[name] = [rng.integers(0, 70_000, 2000).tolist() for _ in range(4)]
        local = write_store(tmp_path / name, docs[name], vocab_size=70_000, docs_per_shard=2)
        urls[name] = f"{prefix}/{name}"
        remote.upload_store(local, urls[name], s3[0])
        sizes.add(sum(p.stat().st_size for p in local.iterdir()))
    assert len(sizes) == 1
    return urls, docs, sizes.pop()


def cached(url: str) -> bool:
    return (store_cache.cached_store_dir(url) / MANIFEST).exists()


def cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "stores").rglob("*") if p.is_file())


def open_and_release(url: str, options: dict) -> TokenStore:
    """Open like a process that then exits: the copy may be evicted afterwards."""
    store = TokenStore.open(url, storage_options=options)
    store_cache.release_store(url)
    return store


def test_the_cache_bound_evicts_the_least_recently_opened_store_and_refetches_it_when_needed(
    stores, s3, cache, monkeypatch
):
    urls, docs, size = stores
    bound = 2 * size + size // 2  # two stores fit, three do not
    monkeypatch.setenv(store_cache.MAX_BYTES_ENV, str(bound))
    staging = store_cache.staging_dir(urls["a"] + "-out")  # a tokenize --out URL under way
    staging.mkdir(parents=True)
    with open(staging / "shard-00000.bin", "wb") as big:
        big.truncate(10 * bound)  # neither counted nor evicted
    for name in "aba":  # a is now more recently opened than b
        open_and_release(urls[name], s3[0])
    assert [cached(urls[n]) for n in "abc"] == [True, True, False]

    open_and_release(urls["c"], s3[0])
    assert [cached(urls[n]) for n in "abc"] == [True, False, True]
    assert cache_bytes(cache) <= bound

    store = open_and_release(urls["b"], s3[0])  # fetched again; a is the least recent now
    assert [cached(urls[n]) for n in "abc"] == [False, True, True]
    assert cache_bytes(cache) <= bound
    store.verify()
    assert documents(store) == docs["b"]
    # Evicted: b before a, a before c, now c before b. No fixed order of the stores (say, by
    # directory name) gives that cycle; only the order of last use does.
    open_and_release(urls["a"], s3[0])
    assert [cached(urls[n]) for n in "abc"] == [True, True, False]
    assert (staging / "shard-00000.bin").stat().st_size == 10 * bound


def hold_in_another_process(url: str) -> subprocess.Popen:
    """A reader process that has opened the store at `url` and keeps running."""
    code = (
        "import sys; from mixer.store import TokenStore; TokenStore.open(sys.argv[1]); "
        "print('open', flush=True); sys.stdin.read()"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", code, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([reader.stdout], [], [], 60)
    assert ready and reader.stdout.readline().strip() == "open"
    return reader


@pytest.mark.parametrize("holder", ["another process", "this process"])
def test_a_store_in_use_is_not_evicted(holder, stores, s3, monkeypatch):
    urls, docs, size = stores
    monkeypatch.setenv(store_cache.MAX_BYTES_ENV, str(size + size // 2))  # one store fits
    first = TokenStore.open(urls["a"], storage_options=s3[0])
    reader = None
    if holder == "another process":
        store_cache.release_store(urls["a"])
        reader = hold_in_another_process(urls["a"])  # the endpoint comes from AWS_ENDPOINT_URL
    try:
        with pytest.raises(MixerError, match="in use by running processes") as error:
            TokenStore.open(urls["b"], storage_options=s3[0])
        assert str(error.value).startswith(f"{urls['b']}: store is {size:,} bytes")
        assert cached(urls["a"])
        first.verify()
        assert sorted(p.name for p in store_cache.cached_store_dir(urls["b"]).iterdir()) == [
            ".lock",
            ".use",
        ]  # nothing downloaded
    finally:
        if reader is not None:
            reader.stdin.close()
            reader.wait(timeout=30)
        store_cache.release_store(urls["a"])
    second = TokenStore.open(urls["b"], storage_options=s3[0])  # a is free to go now
    assert not cached(urls["a"])
    assert documents(second) == docs["b"]


def test_a_store_larger_than_the_bound_is_refused_before_anything_is_evicted(
    stores, s3, monkeypatch, capsys
):
    from mixer.cli import main

    urls, _, size = stores
    open_and_release(urls["a"], s3[0])
    monkeypatch.setenv(store_cache.MAX_BYTES_ENV, "")  # unbounded; undone after the CLI sets it
    with pytest.raises(SystemExit) as exited:
        main(["--cache-max-bytes", str(size - 1), "inspect", urls["b"]])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"mixer: error: {urls['b']}: store is {size:,} bytes, more than the cache bound of "
        f"{size - 1:,} bytes (${store_cache.MAX_BYTES_ENV})"
    )
    assert cached(urls["a"])
    assert not (store_cache.cached_store_dir(urls["b"]) / store_cache.INCOMING).exists()

    monkeypatch.setenv(store_cache.MAX_BYTES_ENV, "lots")
    with pytest.raises(MixerError, match="MIXER_CACHE_MAX_BYTES='lots' is not a positive number"):
        TokenStore.open(urls["b"], storage_options=s3[0])


def test_concurrent_fetches_of_different_stores_respect_the_bound_together(
    stores, s3, cache, monkeypatch
):
    urls, _, size = stores
    bound = 2 * size + size // 2
    monkeypatch.setenv(store_cache.MAX_BYTES_ENV, str(bound))
    open_and_release(urls["a"], s3[0])
    # Both fetches have made room before either downloads a byte: the second must count the
    # first at its full size, not at the nothing it has on disk yet, and so evict a.
    both_started = threading.Barrier(2, timeout=30)
    original = store_cache._download_checked
    started: set[int] = set()

    def after_both_made_room(*args):
        if threading.get_ident() not in started:
            started.add(threading.get_ident())
            both_started.wait()
        return original(*args)

    monkeypatch.setattr(store_cache, "_download_checked", after_both_made_room)
    errors: list[BaseException] = []

    def reader(name: str) -> None:
        try:
            open_and_release(urls[name], s3[0])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(n,)) for n in "bc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert [cached(urls[n]) for n in "abc"] == [False, True, True]
    assert cache_bytes(cache) <= bound
