"""The clustered panel QR's reference (tests/panel_qr_reference.py, the kernel's steps in numpy)
against LAPACK's geqrf (torch.geqrf on the CPU): same reflectors and R to rounding, for any number
of blocks, including blocks left without rows and panels wider than tall. Fresh panels every run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from panel_qr_reference import chunk_rows, clustered_panel_qr

SEED = random.SystemRandom().randrange(2**31)


@pytest.mark.parametrize("rows,cols,blocks", [(1, 1, 1), (5, 3, 3), (3, 5, 2), (40, 8, 1), (40, 8, 4),
                                              (100, 16, 16), (97, 7, 5), (130, 32, 3), (64, 32, 2)])
@pytest.mark.parametrize("kind", ["random", "scaled", "zero_below"])
def test_clustered_panel_qr_is_geqrf(rows, cols, blocks, kind):
    rng = np.random.default_rng(SEED + rows * 131 + cols * 7 + blocks)
    panel = rng.standard_normal((rows, cols))
    if kind == "scaled":
        panel *= np.logspace(3, -3, cols)
    elif kind == "zero_below":
        panel[1:, 0] = 0.0
    qr, tau = clustered_panel_qr(panel, blocks, width=32 if cols > 16 else 16)
    ref_qr, ref_tau = torch.geqrf(torch.from_numpy(panel))
    scale = np.abs(panel).max()
    assert np.abs(qr - ref_qr.numpy()).max() < 1e-12 * max(scale, 1.0), f"seed={SEED}"
    assert np.abs(tau - ref_tau.numpy()).max() < 1e-12, f"seed={SEED}"


def test_block_zero_owns_every_diagonal_element():
    for rows in (1, 5, 31, 33, 100, 4064, 8160):
        for blocks in (1, 2, 3, 8, 16):
            for width in (16, 32):
                chunk = chunk_rows(rows, blocks, width)
                assert chunk * blocks >= rows and chunk >= min(rows, width)
