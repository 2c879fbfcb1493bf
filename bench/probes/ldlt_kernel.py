"""The compiled small LDL^T (csrc/ldlt_unpivoted.cu) alone on a GPU: time per launch against the
block size b (2 b dependent steps: LDL^T, then L^-1) and the batch (one thread block per matrix),
from CUDA events over 50 launches; its result checked by congruence (L^-1 B L^-T = diag(d)).

    python3 bench/probes/ldlt_kernel.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import run_info  # noqa: E402

from spectrum_fast import _extension  # noqa: E402


def main() -> None:
    print(run_info(torch.device("cuda")), flush=True)
    ext = _extension.cuda_ops()
    for b in (16, 32, 48, 64, 96, 128):
        for batch in (1, 64):
            a = torch.randn(batch, b, b, dtype=torch.float64, device="cuda")
            a = (a + a.mT) / 2 + torch.diag_embed((torch.randint(0, 2, (batch, b), device="cuda") * 2 - 1) * (b + 5.0))
            d, lt = ext.ldlt_unpivoted(a)
            err = ((lt.mT @ a @ lt - torch.diag_embed(d)).abs().amax() / a.abs().amax()).item()
            for _ in range(3):
                ext.ldlt_unpivoted(a)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                ext.ldlt_unpivoted(a)
            end.record()
            torch.cuda.synchronize()
            us = start.elapsed_time(end) / 50 * 1e3
            print(f"b={b:4d} batch={batch:3d}: {us:8.1f} us per launch, {us / (2 * b):6.2f} us per step; "
                  f"congruence error {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
