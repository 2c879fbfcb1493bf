"""One Cholesky QR pass (linalg.orthonormalize.cholesky_qr) on a GPU with R^-1 from the compiled
small LDL^T (csrc/ldlt_unpivoted.cu) against cuSOLVER's Cholesky and a triangular solve, per
width c and batch, eager and replayed from a CUDA graph (truncated_svd replays it). CUDA events
over 50 calls after warm-ups.

    python3 bench/probes/cholesky_qr_routes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import captured  # noqa: E402
from run_info import run_info  # noqa: E402

from spectrum_fast.linalg import orthonormalize  # noqa: E402


def event_us(fn, reps: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def main() -> None:
    print(run_info(torch.device("cuda")), flush=True)
    for rows, batch in ((14336, 1), (1536, 64)):
        for c in (26, 48, 64, 74, 80, 128):
            y = torch.randn(batch, rows, c, device="cuda")
            line = [f"rows {rows} batch {batch} c {c}:"]
            for kernel in (True, False):
                orthonormalize.LDLT_KERNEL = kernel
                eager = event_us(lambda: orthonormalize.cholesky_qr(y, passes=1))
                graph, _ = captured(lambda: orthonormalize.cholesky_qr(y, passes=1))
                replay = event_us(graph.replay)
                line.append(f"{'ldlt kernel' if kernel else 'cuSOLVER'} eager {eager:.0f} us, graph {replay:.0f} us")
            print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
