"""Reference (numpy, float64, slow): the clustered panel QR of csrc/householder_panels_cluster.cu
step by step, to pin down its partition and its sums where no GPU runs: the rows split into
``blocks`` chunks (block 0 owning every diagonal element), each block's partial sums added in rank
order, v scaled into column j, w = tau (P[j] + v^T P), the update of rows i >= j, and the squares
of the next column gathered during the update. tests/test_panel_qr_reference.py checks it against
LAPACK's geqrf; the GPU tests check the kernel against geqrf and the streaming kernel."""

from __future__ import annotations

import numpy as np


def chunk_rows(rows: int, blocks: int, width: int) -> int:
    """Rows per block, as the kernel's launcher computes them."""
    chunk = -(-rows // blocks)
    if blocks > 1:
        chunk = max(chunk, min(rows, width))
    return chunk


def clustered_panel_qr(panel: np.ndarray, blocks: int, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """geqrf of one [rows, cols] float64 panel (cols <= width) as the kernel computes it -> (qr, tau)."""
    p = np.array(panel, dtype=np.float64)
    rows, cols = p.shape
    chunk = chunk_rows(rows, blocks, width)
    parts = [range(r * chunk, min(rows, (r + 1) * chunk)) for r in range(blocks)]
    steps = min(rows, cols)
    tau_out = np.full(steps, np.nan)

    def cluster_sum(per_block):  # rank order, as every block adds them
        total = 0.0
        for value in per_block:
            total = total + value
        return total

    sq = [sum(p[i, 0] ** 2 for i in part if i > 0) for part in parts]
    for j in range(steps):
        sigma = cluster_sum(sq)
        alpha = cluster_sum([p[j, j] if r == 0 else 0.0 for r in range(blocks)])
        tau, scale, beta = 0.0, 0.0, alpha
        if sigma != 0.0:
            norm = np.sqrt(alpha * alpha + sigma)
            beta = -norm if alpha >= 0.0 else norm
            tau = (beta - alpha) / beta
            scale = 1.0 / (alpha - beta)
        tau_out[j] = tau
        acc = [np.zeros(cols) for _ in parts]
        for r, part in enumerate(parts):
            for i in part:
                if i > j:
                    v = p[i, j] * scale
                    acc[r][j + 1 :] += v * p[i, j + 1 :]
                    p[i, j] = v
                elif i == j:
                    acc[r][j + 1 :] += p[i, j + 1 :]
        p[j, j] = beta
        if j + 1 >= cols:
            break
        w = tau * cluster_sum(acc)
        sq = [0.0 for _ in parts]
        for r, part in enumerate(parts):
            for i in part:
                if i >= j:
                    v = 1.0 if i == j else p[i, j]
                    p[i, j + 1 :] -= v * w[j + 1 :]
                    if i > j + 1:
                        sq[r] += p[i, j + 1] ** 2
    return p, tau_out
