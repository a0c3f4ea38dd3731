"""`mixer tokenize` on a real 2-node Ray cluster (head + one worker node, both on 127.0.0.1).

The cluster is `ray.cluster_utils.Cluster`: two raylets with their own worker pools, as two
machines would have, sharing this machine's filesystem (so a local --out is "shared storage").
Everything listens on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set in conftest) stops Ray
from swapping 127.0.0.1 for the machine's network address, and RAY_AUTH_MODE=disabled keeps
Ray >= 2.5x from requiring a token that the driver subprocess would not have.

The driver is a `python -m mixer.cli tokenize --ray-address ...` subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ingest import documents, jsonl_bytes, store_files
from test_remote import s3  # noqa: F401 - the moto S3 fixture

from mixer import TokenStore
from mixer.ingest import TokenizeJob, tokenize

pytestmark = pytest.mark.slow
FILES = 6


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes(timeout=60)
        yield nodes
    finally:
        nodes.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_path) -> tuple[Path, Path]:
    """Input files big enough that every task takes a while, and the store a single process
    writes from them (workers=0, no Ray): the reference every cluster run must equal."""
    root = tmp_path_factory.mktemp("cluster")
    src = root / "in"
    src.mkdir()
    for i in range(FILES):
        (src / f"part{i}.jsonl").write_bytes(jsonl_bytes(documents(6000, seed=100 + i)))
    reference = root / "reference"
    tokenize(
        TokenizeJob(
            inputs=(str(src),),
            tokenizer=tokenizer_path,
            out=str(reference),
            workers=0,
            backend="hf",
            chunk_bytes=1 << 20,  # each file (~0.8 MB) its own task: two would pass 1 MiB
        ),
        progress=False,
    )
    return src, reference


def command(src: Path, out: Path, tokenizer_path: str, address: str) -> list[str]:
    return [
        sys.executable, "-m", "mixer.cli", "tokenize", str(src), "-t", tokenizer_path,
        "-o", str(out), "--ray-address", address, "--workers", "2", "--backend", "hf",
        "--no-progress", "--chunk-mb", "1",
    ]  # fmt: skip


def test_tokenize_runs_on_both_nodes_and_equals_a_single_process_run(
    tmp_path, tokenizer_path, cluster, corpus
):
    src, reference = corpus
    out = tmp_path / "store"
    result = subprocess.run(
        command(src, out, tokenizer_path, cluster.address),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    # 2 tasks in flight, 1 CPU per node: Ray must place them on both nodes.
    assert " on 2 Ray nodes" in result.stderr
    assert store_files(out) == store_files(reference)


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def running_task_pids(name: str) -> list[int]:
    """Workers of this test's cluster executing task `name` (Ray titles them ray::NAME).

    Only descendants of this process (the cluster's raylets are its children) are candidates,
    so a Ray that something else runs on the machine is never touched."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                continue
            ancestor = int(proc.name)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = parent(ancestor)
        except (OSError, ValueError, IndexError):
            continue
        if ancestor == os.getpid():
            pids.append(int(proc.name))
    return pids


def test_a_worker_killed_mid_task_is_retried_without_losing_or_duplicating_documents(
    tmp_path, tokenizer_path, cluster, corpus
):
    src, reference = corpus
    out = tmp_path / "store"
    driver = subprocess.Popen(
        command(src, out, tokenizer_path, cluster.address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        pids = running_task_pids("run_task_on_node")
        if pids and not any(out.glob("shard-*.bin")):  # mid-task: nothing published yet
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.02)
    _, stderr = driver.communicate(timeout=180)
    assert killed is not None, "no running task was seen to kill"
    assert driver.returncode == 0, stderr
    assert store_files(out) == store_files(reference)  # also: no temp file left behind


def test_tokenize_to_s3_from_both_nodes_needs_no_shared_filesystem(
    tmp_path,
    tokenizer_path,
    cluster,
    corpus,
    s3,  # noqa: F811 - the imported fixture
):
    """Each worker stages its shard in its own --cache-dir and uploads it: the driver never
    needs to see a worker's disk. Credentials reach the workers in --storage-options."""
    src, reference = corpus
    options, bucket = s3
    options = {**options, "key": os.environ["AWS_ACCESS_KEY_ID"],
               "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    url = f"s3://{bucket}/cluster-{tmp_path.name}"
    result = subprocess.run(
        [*command(src, url, tokenizer_path, cluster.address),
         "--storage-options", json.dumps(options), "--cache-dir", str(tmp_path / "staging")],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " on 2 Ray nodes" in result.stderr
    store = TokenStore.open(url, storage_options=options, cache_dir=tmp_path / "cache")
    names = [p.name for p in reference.iterdir()]
    assert {n: (store.root / n).read_bytes() for n in names} == store_files(reference)
