"""linalg.inertia.count_above: the number of eigenvalues above a shift, against float64 eigvalsh,
on random symmetric matrices (sizes across the block and panel edges) and on Grams of spiked
matrices with the shift between two close eigenvalues; a singular pivot block is reported."""

from __future__ import annotations

import pytest
import torch

from spectrum_fast.linalg import inertia


@pytest.mark.parametrize("block, panel", [(128, 128), (32, 128), (32, 64)])
@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 100, 129, 257, 300])
def test_counts_match_eigvalsh_on_random_symmetric_matrices(n, block, panel, device, seed, monkeypatch):
    """Pivot blocks of one panel (the default) or several, across the block and panel edges."""
    monkeypatch.setattr(inertia, "BLOCK", block)
    monkeypatch.setattr(inertia, "PANEL", panel)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    a = a + a.mT
    ev = torch.linalg.eigvalsh(a)
    cut = torch.randint(0, n, (3,), generator=gen)
    below = ev.gather(-1, cut.unsqueeze(-1)).squeeze(-1)
    above = ev.gather(-1, (cut + 1).clamp(max=n - 1).unsqueeze(-1)).squeeze(-1)
    shift = torch.where(cut + 1 < n, (below + above) / 2, below + 1.0)  # between two, or above all
    counts, reliable = inertia.count_above(a.to(device), shift.to(device))
    truth = (ev > shift.unsqueeze(-1)).sum(-1)
    assert counts.cpu().tolist() == truth.tolist(), (seed, n)
    assert bool(reliable.all()), (seed, n)


def test_counts_on_spiked_grams_split_close_eigenvalues(device, seed):
    """Grams W W^T (fp32, as the fast mode forms them) of noise plus 12 spikes; the shift halfway
    between the 12th and 13th eigenvalues and between two bulk values near the top."""
    gen = torch.Generator().manual_seed(seed)
    n, m, r = 200, 600, 12
    w = torch.randn(4, n, m, generator=gen, dtype=torch.float64) / m ** 0.5
    u = torch.linalg.qr(torch.randn(4, n, r, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(4, m, r, generator=gen, dtype=torch.float64))[0]
    w += (u * torch.linspace(4, 2, r, dtype=torch.float64)) @ v.mT
    g = (w @ w.mT).to(torch.float32)
    ev = torch.linalg.eigvalsh(g.double()).flip(-1)
    for q in (r, r + 5):
        shift = (ev[:, q - 1] + ev[:, q]) / 2
        counts, reliable = inertia.count_above(g.to(device), shift.to(device))
        assert counts.cpu().tolist() == [q] * 4, (seed, q, ((ev[:, q - 1] - ev[:, q]) / ev[:, q]).tolist())
        assert bool(reliable.all()), seed


def test_a_singular_pivot_block_is_reported_not_trusted(device, seed):
    gen = torch.Generator().manual_seed(seed)
    d = torch.rand(2, 70, generator=gen, dtype=torch.float64) + 1.0
    g = torch.diag_embed(d)
    shift = d[:, 0].clone()  # g - shift I has an exact zero on its first pivot block's diagonal
    shift[1] = 0.5  # the second matrix is fine
    counts, reliable = inertia.count_above(g.to(device), shift.to(device))
    assert reliable.cpu().tolist() == [False, True], seed
    assert int(counts[1]) == 70, seed


def test_bad_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"count_above: g must be \[B, n, n\]"):
        inertia.count_above(torch.zeros(3, 4), torch.zeros(3))
