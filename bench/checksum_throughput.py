"""How fast the result cache's key is computed: hashlib's algorithms on one core, then
spectrum_fast.checksums on a weight file (from the page cache) and on tensors in memory.

    python3 bench/checksum_throughput.py [--mib 512] [--repeats 3] [--out DIR]

The file is written to a temporary folder first, so it is read from the page cache (a cold disk
adds its read time: the first scan reads the file anyway). Best of --repeats per line. --out DIR
also writes checksum_throughput_cpu_<commit>.log (the same text).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from spectrum_fast import checksums  # noqa: E402

ALGORITHMS = ("sha256", "sha1", "blake2b", "md5")


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rate_line(label: str, size: int, seconds: float) -> str:
    return f"{label:<56} {size / seconds / 1e9:6.2f} GB/s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512, help="MiB of data to hash")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for the log")
    args = ap.parse_args()
    size = args.mib << 20
    lines = [f"{k}: {v}" for k, v in run_info(torch.device("cpu")).items()]
    lines.append(f"data: {args.mib} MiB of random bytes; best of {args.repeats}; GB = 1e9 bytes")
    data = os.urandom(size)
    piece = checksums.PIECE_BYTES
    for name in ALGORITHMS:
        def one_core(name=name):
            h = hashlib.new(name)
            view = memoryview(data)
            for i in range(0, size, piece):
                h.update(view[i : i + piece])
        lines.append(rate_line(f"hashlib {name}, one core", size, best_seconds(one_core, args.repeats)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.safetensors"
        path.write_bytes(data)
        for threads in sorted({1, checksums.hash_threads()}):
            s = best_seconds(lambda: checksums.file_digests([path], None, threads), args.repeats)
            lines.append(rate_line(f"checksums.file_digests, {threads} thread(s), page cache", size, s))
    tensors = [("w", torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(-1, 4096))]
    for threads in sorted({1, checksums.hash_threads()}):
        s = best_seconds(lambda: checksums.tensors_digest(tensors, threads), args.repeats)
        lines.append(rate_line(f"checksums.tensors_digest, {threads} thread(s), host memory", size, s))
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        commit = run_info(torch.device("cpu"))["commit"]
        (out / f"checksum_throughput_cpu_{commit}.log").write_text(text + "\n")


if __name__ == "__main__":
    main()
