"""What the result cache costs and saves on a GPU scan of a Llama-3-8B-shaped checkpoint in the page
cache (bench/workloads.py, written first if missing): scan(folder) without the cache, then with a
fresh cache folder (the first scan hashes every file byte for the key, then scans and stores), then
again (the key from remembered file digests, the rows from the cache), each timed in this process
after one warm-up scan of layer 0's shapes.

    python3 bench/probes/cache_overhead.py --folder /tmp/llama3-8b-model
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import run_info  # noqa: E402
from timing import timed  # noqa: E402

import spectrum_fast  # noqa: E402


def timed_scan(folder: Path, cache: bool) -> tuple[float, object]:
    return timed(lambda: spectrum_fast.scan(folder, progress=False, cache=cache), torch.device("cuda"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, default=Path("/tmp/llama3-8b-model"))
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    if not (args.folder / "config.json").exists():
        from workloads import write_llama3_8b_model

        write_llama3_8b_model(args.folder)
    os.environ["SPECTRUM_FAST_CACHE"] = tempfile.mkdtemp(prefix="spectrum_fast_cache_")
    spectrum_fast.scan(args.folder, progress=False, cache=False, types=["self_attn.q_proj"])  # warm-up
    plain_s, plain = timed_scan(args.folder, cache=False)
    first_s, first = timed_scan(args.folder, cache=True)
    second_s, second = timed_scan(args.folder, cache=True)
    same = [(r.name, r.snr) for r in plain.rows] == [(r.name, r.snr) for r in second.rows]
    print(f"no cache {plain_s:.2f} s; first with the cache {first_s:.2f} s (hash + scan + store); "
          f"second {second_s:.3f} s (from the cache: {second.from_cache}); rows identical to the uncached "
          f"scan: {same}", flush=True)


if __name__ == "__main__":
    main()
