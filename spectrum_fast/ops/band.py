"""The two-stage symmetric eigen solve's band steps, on whatever device holds the matrix: stage 1,
dense -> band (reduce_to_band_), and on CUDA stage 2's band -> tridiagonal (band_to_tridiagonal).

cuSOLVER's syevd reduces straight to tridiagonal form: 4n/3 n^2 flops spent in matrix-vector
products, one panel column at a time, so a 4096 float64 solve is bound by memory and launch
latency (117 ms on the H100, ~1 TFLOP/s). Reducing to a band of width ``bandwidth`` first moves
the same flops into matrix-matrix products (tensor-core DGEMM) over n / bandwidth panels; the band
is then small (n x (bandwidth + 1)) and its eigenvalues come from the GPU (band_to_tridiagonal,
then kernels.tridiagonal) or from LAPACK on the host (ops.band_eigen). Orthogonal similarity
transforms in float64 (the GPU route upcasts float32 input, ops.eigen._two_stage_gpu says why):
the eigenvalues are kept to backward-stable accuracy, like syevd's.
"""

from __future__ import annotations

import torch


# Factor a batch's panels with the compiled kernel (csrc/householder_panels.cu: one launch, one
# block per panel) instead of torch.geqrf (one cuSOLVER call per matrix), for batches of at least
# PANEL_KERNEL_MIN_BATCH and m / PANEL_KERNEL_ROWS_PER_PANEL panels: one block per panel streams
# its panel column by column, so a few very tall panels leave most SMs idle and take longer than
# cuSOLVER (H100, route per matrix with every panel to the kernel against none, both with the
# compiled chase: n = 4096 x 8 62.4 against 68.1 ms, 8192 x 4 446 against 384;
# bench/results/eigen_engine_h100_a0ebcdc.log).
PANEL_KERNEL = True
PANEL_KERNEL_ROWS_PER_PANEL = 512
PANEL_KERNEL_MIN_BATCH = 1
# Factor every panel (with PANEL_KERNEL on) on a cluster of blocks per panel that holds it in
# shared memory (csrc/householder_panels_cluster.cu) instead of one block streaming it, whatever
# the batch (the rule above is then moot). H100, route per matrix, clusters against the rule at
# 394157b: 1024 x 64 1.01 against 1.05 ms, 2048 x 32 4.67 against 5.18, 4096 x 8 36.7 against
# 47.9, 4096 x 32 18.7 against 20.8, 8192 x 4 188 against 223
# (bench/results/eigen_engine_h100_394157b.log).
PANEL_CLUSTER = True


def panel_geqrf(panel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.geqrf(panel) for a batch [B, m, w]: (qr, tau) in LAPACK's layout, ``panel`` untouched."""
    from .. import _extension

    batch, m, w = panel.shape
    wanted = (PANEL_KERNEL and panel.is_cuda and panel.dtype in (torch.float64, torch.float32)
              and (PANEL_CLUSTER or (batch >= PANEL_KERNEL_MIN_BATCH and batch * PANEL_KERNEL_ROWS_PER_PANEL >= m)))
    ext = _extension.cuda_ops() if wanted else None
    if ext is not None and w <= ext.householder_panels_max_columns():
        qr = panel.clone(memory_format=torch.contiguous_format)
        return qr, ext.householder_panels_(qr, 0 if PANEL_CLUSTER else -1)
    return torch.geqrf(panel)


# Form each panel's V and T in one launch (csrc/compact_wy.cu) instead of the ten or so ATen
# operations below (in the C++ loop too), where the panel kernel factored it (rows contiguous).
# Off: slower in the 8B scan with the weights on the GPU (H100, same run: 4.94 s against 4.72;
# one block per panel is little parallelism at the scan's batches; bench/probes/
# scan_profile_h100_450d0f7.log). tests/test_householder_panels.py checks it against the
# operations below.
COMPACT_WY_KERNEL = False


def _panel_reflectors(panel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Householder QR of a batch of tall panels [B, m, w] -> (R [B, r, w], V [B, m, r], T [B, r, r])
    with Q = I - V T V^T (the "UT" compact form) and Q^T panel = [R; 0], r = min(m, w)."""
    from .. import _extension

    qr, tau = panel_geqrf(panel)
    r = tau.shape[-1]
    ext = _extension.cuda_ops() if COMPACT_WY_KERNEL and qr.is_cuda and qr.stride(-1) == 1 else None
    if ext is not None and qr.dtype in (torch.float64, torch.float32) and r <= ext.householder_panels_max_columns():
        v, t = ext.compact_wy(qr, tau)
        return torch.triu(qr[..., :r, :]), v, t
    v = torch.tril(qr[..., :r], -1)
    v.diagonal(dim1=-2, dim2=-1).fill_(1)
    # tau == 0 means "reflector is the identity" (the column below the diagonal was already zero);
    # zeroing its vector keeps T finite and the update exact.
    identity = tau == 0
    v.masked_fill_(identity.unsqueeze(-2), 0)
    # T^-1 = diag(1/tau) + strictly-upper(V^T V)  (Joffrain et al., "Accumulating Householder
    # transformations, revisited", 2006): one triangular solve instead of a column-by-column larft.
    t_inv = torch.triu(v.mT @ v, 1)
    t_inv.diagonal(dim1=-2, dim2=-1).copy_(torch.where(identity, torch.ones_like(tau), tau.reciprocal()))
    eye = torch.eye(r, dtype=panel.dtype, device=panel.device).expand_as(t_inv)
    t = torch.linalg.solve_triangular(t_inv, eye, upper=True)
    return torch.triu(qr[..., :r, :]), v, t


# Panels per trailing update in stage 1 (reduce_to_band_). With 1, every panel's two-sided update
# reads and writes the whole trailing matrix (with Y's read, 3 passes over it per panel: the GEMMs'
# bytes, near their floor on the H100, csrc/NOTES.md). With p > 1, panels 2..p of a group take
# their columns and their Y from the matrix as it was at the group's start, corrected by the
# group's earlier reflectors (skinny products), and the group's p updates go in as one of inner
# size 2 p b: 1 + 2 / p passes per panel instead of 3. Used for n >= STAGE1_GROUPED_MIN_N:
# H100, route per matrix with clustered panels, grouped by 4 against not at 394157b: 2048 x 32
# 4.50 against 4.67 ms, 4096 x 8 36.9 against 36.7, 4096 x 32 16.0 against 18.7, 8192 x 4 170
# against 188; 1024 x 64 1.06 against 1.01, where a panel's skinny corrections cost more than the
# pass they save (bench/results/eigen_engine_h100_394157b.log). In the scan of 2 DeepSeek-V2 MoE
# layers (1536-wide Grams) grouped took 2.26 s against 2.37 (H100, same run,
# bench/probes/scan_profile_deepseek_h100_72487e2.log); Llama-3-8B's 1024-wide ones gained nothing
# there (4.36 against 4.18 s, noisy: bench/probes/scan_profile_h100_72487e2.log).
STAGE1_PANELS_PER_UPDATE = 4
STAGE1_GROUPED_MIN_N = 1536


# Run the loops below (ungrouped or grouped) in C++ (csrc/band_reduction.cpp: the same ATen
# operations in the same order, without Python's cost per operation and without the GIL) where the
# extension is built; the tests check that both give the same band. It was no faster in the 8B scan
# with the weights on the GPU (H100: 4.71 s against 4.72, bench/probes/scan_profile_h100_450d0f7.log,
# the GPU busy nearly all the time on that lease), but with today's chase and panel kernels it is
# faster in that scan read from disk: medians of 3 alternated in one process, 3.93 s against 4.18
# on one GPU and 2.30 against 2.70 s on two (2x H100, bench/probes/rank_timeline_2xh100_f281b64.log;
# again at c6e9ade, _c6e9ade.log: 4.12 and 4.16 s against 4.35 and 4.38).
STAGE1_IN_CPP = True


def reduce_to_band_(a: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """Overwrite symmetric ``a`` ([B, n, n], float64 advised) with a similar matrix of bandwidth
    ``bandwidth`` (entries with |i - j| > bandwidth are exactly 0). Returns ``a``.

    Panel k (columns k..k+b-1, rows k+b..n-1) is factored Q R; then the trailing block gets the
    two-sided update Q^T A22 Q = A22 - V Z^T - Z V^T with Y = A22 V T, Z = Y - V (T^T V^T Y) / 2,
    done as one batched GEMM of inner size 2b.
    """
    if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"reduce_to_band_ expects [B, n, n], got {tuple(a.shape)}")
    from .. import _extension

    group = max(STAGE1_PANELS_PER_UPDATE, 1) if a.shape[-1] >= STAGE1_GROUPED_MIN_N else 1
    ext = _extension.load() if STAGE1_IN_CPP else None
    if ext is not None and hasattr(ext, "reduce_to_band_"):
        kernel = PANEL_KERNEL and _extension.cuda_ops() is not None
        if kernel and PANEL_CLUSTER:  # every panel to the clustered kernel, as panel_geqrf does
            rule = (1, 1 << 40, 0)
        else:
            rule = (PANEL_KERNEL_MIN_BATCH if kernel else 0, PANEL_KERNEL_ROWS_PER_PANEL, -1)
        return ext.reduce_to_band_(a, bandwidth, *rule, group, COMPACT_WY_KERNEL and kernel)
    if group > 1:
        return _reduce_to_band_grouped_(a, bandwidth, group)
    n, b = a.shape[-1], bandwidth
    for k in range(0, max(n - b - 1, 0), b):
        p0 = k + b
        v, t = _factor_panel_(a, k, b)
        trailing = a[:, p0:, p0:]
        y = trailing @ (v @ t)
        z = _z_of(y, v, t)
        trailing.baddbmm_(torch.cat([v, z], -1), torch.cat([z, v], -1).mT, alpha=-1)
    return a


def _factor_panel_(a: torch.Tensor, k: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Panel k (columns k..k+b-1, rows k+b..) of ``a`` -> its R and zeros in place, mirrored into
    rows k..k+b-1; returns the panel's (V, T)."""
    panel = a[:, k + b :, k : k + b]
    r, v, t = _panel_reflectors(panel)
    panel.zero_()
    panel[:, : r.shape[-2], :] = r
    a[:, k : k + b, k + b :] = panel.mT
    return v, t


def _z_of(y: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Z = Y - V (T^T V^T Y) / 2: with it the two-sided update is A - V Z^T - Z V^T."""
    return y - 0.5 * (v @ (t.mT @ (v.mT @ y)))


def _stacked(kept: list[tuple[int, torch.Tensor, torch.Tensor]], row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[V_1..V_j Z_1..Z_j] and [Z_1..Z_j V_1..V_j] of the kept panels (s_j, V_j, Z_j), rows >= ``row``
    of the group's trailing matrix: sum_j V_j Z_j^T + Z_j V_j^T is then one product of the two."""
    vs = [v_j[:, row - s_j :] for s_j, v_j, _ in kept]
    zs = [z_j[:, row - s_j :] for s_j, _, z_j in kept]
    return torch.cat(vs + zs, -1), torch.cat(zs + vs, -1)


def _reduce_to_band_grouped_(a: torch.Tensor, b: int, group: int) -> torch.Tensor:
    """reduce_to_band_ with the trailing updates of ``group`` panels at a time (the same reflectors;
    STAGE1_PANELS_PER_UPDATE says why). In a group starting at panel column k, M = a[r0:, r0:] with
    r0 = k + b is the trailing matrix as it stands; panel i >= 2 of the group has its columns at
    M[:, c:c+b], c = (i - 2) b, and its reflectors act on M's rows from s = (i - 1) b. Until the
    group's update, M_now = M - sum_j (V_j Z_j^T + Z_j V_j^T) over the group's earlier panels j
    (V_j, Z_j kept for rows >= s_j), so a panel's columns and Y = M_now V T come from M and those
    products. Entries a panel finishes (its diagonal block, R and zeros, and their mirror) are
    written as it goes; they lie outside M[s:, s:], which still holds M as it stood."""
    n = a.shape[-1]
    last = max(n - b - 1, 0)  # panels start at columns k < last, as in reduce_to_band_
    k = 0
    while k < last:
        r0 = k + b
        m = a[:, r0:, r0:]
        v, t = _factor_panel_(a, k, b)
        y = m @ (v @ t)
        kept = [(0, v, _z_of(y, v, t))]  # (s_j, V_j, Z_j), rows >= s_j of M
        while len(kept) < group and r0 + (len(kept) - 1) * b < last:
            c = (len(kept) - 1) * b  # this panel's columns in M; its reflectors from row c + b
            s = c + b
            vz, zv = _stacked(kept, c)  # the group's earlier panels, rows >= c, in one product
            columns = m[:, c:, c : c + b] - vz @ zv[:, :b].mT
            r, v, t = _panel_reflectors(columns[:, b:])
            done = torch.zeros_like(columns)
            done[:, :b] = columns[:, :b]
            done[:, b : b + r.shape[-2]] = r
            m[:, c:, c : c + b] = done
            m[:, c : c + b, c:] = done.mT
            w = v @ t
            y = m[:, s:, s:] @ w - vz[:, b:] @ (zv[:, b:].mT @ w)  # the same sum, rows >= s
            kept.append((s, v, _z_of(y, v, t)))
        s_last = kept[-1][0]
        vz, zv = _stacked(kept, s_last)
        m[:, s_last:, s_last:].baddbmm_(vz, zv.mT, alpha=-1)
        k += len(kept) * b
    return a


def lower_band(a: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """[B, n, n] banded -> [B, n, bandwidth + 1] with out[:, j, d] = a[:, j + d, j] (0 past the end).

    Row-major [n, b+1] is LAPACK's lower band storage AB(d+1, j) in column-major order, so each
    matrix goes to ?sbev as is.
    """
    bsz, n, _ = a.shape
    out = a.new_zeros(bsz, n, bandwidth + 1)
    for d in range(min(bandwidth, n - 1) + 1):
        out[:, : n - d, d] = torch.diagonal(a, offset=-d, dim1=-2, dim2=-1)
    return out


# Chase the bulges with the compiled kernel (csrc/bulge_chase.cu: the sweeps pipelined, 3 steps
# apart, over a cluster of blocks per matrix) instead of the Triton one (kernels/bulge.py: one sweep
# after the other). H100, bench/eigen_engine.py at a0ebcdc: faster at every size measured (route
# per matrix n = 1024 x 64 3.92 -> 3.82 ms, 4096 x 32 52.5 -> 40.5, 8192 x 4 693 -> 384).
CHASE_KERNEL = True
# Blocks per matrix for the compiled chase: 0 lets the kernel choose (csrc/bulge_chase.cu).
CHASE_BLOCKS_PER_MATRIX = 0
# Time steps between the starts of consecutive sweeps in the compiled chase: 3, 2 (2/3 of the
# time steps, half as many sweeps again in flight, the same result bit for bit: csrc/bulge_chase.cu
# says why), or 0 (the kernel takes 2 where its shared memory fits, else 3). 2x H200,
# bench/probes/chase_split.py at 2cd5d4a: lag 2 a third faster on one 4096 matrix (116 -> 78 ms)
# and on eleven (10.6 -> 7.2 ms each). Figures measured before 2026-11-27 ran lag 3.
CHASE_LAG = 0


def band_to_tridiagonal(bands: torch.Tensor, bandwidth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: symmetric bands in lower band storage ([B, n, width] float64 or float32, width >= 2 *
    bandwidth, lower_band's layout) reduced in place to similar tridiagonals -> (diagonals [B, n],
    subdiagonals [B, n - 1])."""
    from .. import _extension
    from ..kernels import bulge

    ext = _extension.cuda_ops() if CHASE_KERNEL and bands.is_cuda else None
    if ext is not None and bandwidth <= ext.bulge_chase_max_bandwidth():
        return ext.band_to_tridiagonal_(bands, bandwidth, CHASE_BLOCKS_PER_MATRIX, CHASE_LAG)
    if bands.dtype != torch.float64:  # the Triton chase is float64 only: chase the band in float64
        return bulge.band_to_tridiagonal(bands.double(), bandwidth)
    return bulge.band_to_tridiagonal(bands, bandwidth)

