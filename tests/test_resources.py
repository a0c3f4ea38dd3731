"""Resource bounds measured in a child process: file descriptors under `ulimit -n 1024`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np

from mixer.store.format import MANIFEST, encode_index, write_json_atomic
from mixer.store.writer import build_manifest


def quick_store(root, documents, per_shard=1):
    """A store written without fsync (thousands of shards in a second), through the format's
    own encoders, so it is byte for byte what `write_store` writes."""
    root.mkdir(parents=True)
    dtype = np.dtype(np.uint16)
    shards = []
    for number, start in enumerate(range(0, len(documents), per_shard)):
        chunk = documents[start : start + per_shard]
        name = f"shard-{number:05d}"
        data = np.concatenate(chunk).astype("<u2").tobytes()
        idx = encode_index(np.array([len(d) for d in chunk]), dtype)
        (root / f"{name}.bin").write_bytes(data)
        (root / f"{name}.idx").write_bytes(idx)
        shards.append(
            {
                "name": name,
                "bin": f"{name}.bin",
                "idx": f"{name}.idx",
                "documents": len(chunk),
                "tokens": len(data) // 2,
                "bin_bytes": len(data),
                "idx_bytes": len(idx),
                "bin_sha256": hashlib.sha256(data).hexdigest(),
                "idx_sha256": hashlib.sha256(idx).hexdigest(),
            }
        )
    tokenizer = {"sha256": "0" * 64, "vocab_size": 1000}
    manifest = build_manifest(shards, tokenizer=tokenizer, eos_id=0, dtype=dtype)
    write_json_atomic(root / MANIFEST, manifest)
    return root


CHILD = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from mixer.cli import main
from mixer.mix.export import export_mix
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.store.reader import TokenStore

peak = 0
def fds():
    global peak
    peak = max(peak, len(os.listdir("/proc/self/fd")))

big = TokenStore.open(sys.argv[1])
for i in range(big.num_documents):
    assert big.document(i)[0] == i % 997, i
    fds()
assert len(big.tokens(0, big.num_tokens)) == big.num_tokens
big.verify()
fds()
for verb in ("inspect", "verify"):
    try:
        main([verb, sys.argv[1]])
    except SystemExit as e:
        assert not e.code, e
sampler = MixSampler(MixSpec.from_toml(sys.argv[2]), verify=True)
fds()
for i in range(len(sampler)):
    sampler.get(i, positions=True)
    fds()
export_mix(sampler, sys.argv[3], progress=False)
fds()
print("shards", len(big.shards), "sources", len(sampler.stores), "peak fds", peak)
"""


def test_thousands_of_shards_and_a_thousand_sources_under_ulimit_1024(tmp_path):
    docs = [np.array([i % 997, 1, 2, 3]) for i in range(3000)]
    big = quick_store(tmp_path / "big", docs)
    lines = ["seq_len = 4", "seed = 1", "total_tokens = 8808"]
    for k in range(1100):
        quick_store(tmp_path / f"s{k}", [np.array([k % 997, k // 997, 6, 7, 8, 9, 10, 11, 12])])
        lines += ["[[source]]", f'name = "s{k}"', f'store = "s{k}"', "weight = 0.0009"]
    lines += ["[[source]]", 'name = "big"', 'store = "big"', "weight = 0.01"]
    (tmp_path / "mix.toml").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CHILD),
            str(big),
            str(tmp_path / "mix.toml"),
            str(tmp_path / "mixed"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    assert "shards 3000 sources 1101" in result.stdout, result.stdout


# VmHWM, not getrusage's ru_maxrss: the latter keeps the high-water mark of the forking
# process (pytest itself, GBs late in the suite) across exec.
MEMORY_CHILD = """
import sys
from mixer.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
peak = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print("exit", code, "peak_rss_kb", peak)
"""

PEAK_RSS_BOUND_MB = 600  # measured: about 150 MB (imports included); HF alone took 10 GB


def test_one_50_mb_document_stays_under_a_memory_ceiling(tmp_path, tokenizer_path):
    """A 50 MB single-line document (base64-like, one JSON line) is counted as too_large under
    the default --max-document-bytes: read at most 16 MiB far, never tokenized, peak RSS of the
    whole `mixer tokenize` process (auto backend, so its verification too) measured here."""
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write('{"text": "' + "QUJD" * (50_000_000 // 4) + '"}\n{"text": "a small one"}\n')
    argv = [
        "tokenize",
        str(path),
        "-t",
        tokenizer_path,
        "-o",
        str(tmp_path / "out"),
        "--workers",
        "0",
        "--on-error",
        "skip",
    ]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, *argv], capture_output=True, text=True, timeout=300
    )
    print(result.stdout, result.stderr[-500:])
    words = result.stdout.split()
    assert words[:2] == ["exit", "0"], result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["skipped"] == {"too_large": 1} and manifest["num_documents"] == 1
    assert int(words[3]) < PEAK_RSS_BOUND_MB * 1024
