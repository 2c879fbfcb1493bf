"""Top-k singular triplets of a matrix, or of a batch of same-shape matrices (MoE experts), without
a full SVD: ``truncated_svd(A, k) -> (U, S, Vh)``.

Methods:
- "randomized" (Halko, Martinsson & Tropp, SIAM Review 53(2), 2011: algorithms 4.4 and 5.1):
  sketch Y = A Omega with an m x l Gaussian Omega, l = k + oversample; orthonormalize; power_iters
  subspace iterations, re-orthonormalized after every product (Q <- qr(A^T Q), Q <- qr(A Q); the
  bf16 route below: once per iteration), so that the small singular values are not lost to
  rounding; then B = Q^T A, the SVD of the small B = U_B S Vh, and U = Q U_B. It reads A 2 power_iters + 2 times, l columns at a time.
- "lanczos": Golub-Kahan-Lanczos bidiagonalization from a random unit start vector, l steps, each
  new vector re-orthogonalized against all earlier ones by two passes of classical Gram-Schmidt
  (one pass leaves errors of the order of the lost digits; two restore orthogonality to rounding
  level), then the SVD of the small bidiagonal and the Ritz vectors. It reads A 2 l - 1 times, one
  vector at a time, and converges faster per product where the spectrum decays.
Both run batched over B with torch ops.

Routes of the randomized method:
- bf16 A on a GPU (SPLIT_PRODUCTS, below): products on bf16 tensor cores with the fp32 operand
  split in bf16 parts, Cholesky QR in float64 (once between products, twice for the final basis),
  the small SVD from B B^T's eigenpairs (SMALL_EIGH: up to l = 32 on the device by cuSOLVER's
  batched Jacobi solver where the extension has it, else on the host below l = 128 and on the
  device by torch from there); Omega bf16 from torch.randn, or from the Triton kernel
  (FUSED_SKETCH, off: slower there). From the second call with a shape on, the device work
  replays from a CUDA graph (linalg.graphs: the call is otherwise ~100 launches, host-bound): the
  whole call up to l = 32, else two graphs, before and after the small eigen solve on the host. A
  graph reads A in place when A is at an address it has seen (the same tensor again, or a reused
  buffer), else from a copy it holds while cached;
- otherwise products, QRs and SVDs in fp32 (float64 for float64 A); bf16/fp16 A is upcast to fp32
  exactly, whole when its copy is small (_RESIDENT_BYTES), else chunk by chunk at every product
  (_CHUNK_BYTES at a time). TF32 is kept off as in ops.gram (matmul precision "highest" for the
  duration of the call, then restored): it would round the fp32 operands to 10 mantissa bits. The
  sketch comes from the Triton kernel spectrum_fast.kernels.sketch on the CPU under
  TRITON_INTERPRET=1 (tests) or on a GPU with FUSED_SKETCH (Omega from Philox inside the kernel,
  never stored; that module says which Omega, and why it is rounded to A's dtype), else from
  torch.randn with a torch.Generator seeded with ``seed``, one chunk of A at a time. The backends
  draw different Omegas for the same seed.
Results are fp32.

seed=None draws a fresh seed from torch's default generator: results vary from run to run unless
torch.manual_seed was set; an int makes a call reproducible on a given device and backend.
"""

from __future__ import annotations

import functools

import torch

from ..kernels import sketch as sketch_kernel
from ..ops.gram import _full_fp32_matmul, upcast_blocks
from . import graphs, orthonormalize, small_eigh, split_products
from .orthonormalize import cholesky_qr

METHODS = ("randomized", "lanczos")

# An fp32 copy of a 16-bit A this small is made once and kept for the whole call; larger inputs
# are upcast in chunks of at most _CHUNK_BYTES at every product (more passes, bounded memory).
_RESIDENT_BYTES = 1 << 30
_CHUNK_BYTES = 256 << 20


def truncated_svd(A: torch.Tensor, k: int, *, method: str = "randomized", oversample: int = 10,
                  power_iters: int = 2, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets of A ([n, m], or [B, n, m] for B same-shape matrices).

    Returns fp32 (U [.., n, k], S [.., k] descending and non-negative, Vh [.., k, m]) on A's
    device. l = min(k + oversample, min(n, m)) is the sketch width ("randomized") or the number of
    Lanczos steps ("lanczos"); power_iters is used by "randomized" only. The module docstring says
    how each method works and which random numbers ``seed`` picks.
    """
    _validate(A, k, method, oversample, power_iters, seed)
    a = A.detach() if A.dim() == 3 else A.detach().unsqueeze(0)
    batch, n, m = a.shape
    l = min(k + oversample, min(n, m))
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())
    if batch == 0:
        u, s, vh = (torch.zeros(shape, dtype=torch.float32, device=a.device) for shape in ((0, n, k), (0, k), (0, k, m)))
    elif method == "randomized" and _takes_split_products(a):
        with torch.no_grad():
            u, s, vh, failed = _randomized_svd_split(a, k, l, power_iters, seed)
            if bool(failed.any()):  # a rank-deficient sketch: those matrices again, Householder QR
                with _full_fp32_matmul():
                    redo = _randomized_svd(_UpcastOperator(a[failed]), k, l, power_iters, seed)
                for out, part in zip((u, s, vh), redo):
                    out[failed] = part.to(torch.float32)
    else:
        with torch.no_grad(), _full_fp32_matmul():
            operator = _UpcastOperator(a)
            if method == "randomized":
                u, s, vh = _randomized_svd(operator, k, l, power_iters, seed)
            elif n < m:  # start on the shorter side, whose Krylov spaces fill it (exact at l = min(n, m))
                v, s, uh = _lanczos_svd(_Transposed(operator), k, l, seed)
                u, vh = uh.mT, v.mT
            else:
                u, s, vh = _lanczos_svd(operator, k, l, seed)
        u, s, vh = (t.to(torch.float32) for t in (u, s, vh))
    if A.dim() == 2:
        return u[0], s[0], vh[0]
    return u, s, vh


def _validate(A, k, method, oversample, power_iters, seed) -> None:
    """One-line ValueErrors naming the argument at fault."""
    if not isinstance(A, torch.Tensor):
        raise ValueError(f"truncated_svd: A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() not in (2, 3):
        raise ValueError(f"truncated_svd: A must be [n, m] or [B, n, m], got {A.dim()} dimensions {tuple(A.shape)}")
    if not A.is_floating_point():
        raise ValueError(f"truncated_svd: A must have a floating dtype, got {A.dtype}")
    if method not in METHODS:
        raise ValueError(f"truncated_svd: method must be one of {METHODS}, got {method!r}")
    short_side = min(A.shape[-2], A.shape[-1])
    if not _is_int(k) or not 1 <= k <= short_side:
        raise ValueError(f"truncated_svd: k must be an int with 1 <= k <= min(n, m) = {short_side}, got {k!r}")
    if not _is_int(oversample) or oversample < 0:
        raise ValueError(f"truncated_svd: oversample must be an int >= 0, got {oversample!r}")
    if not _is_int(power_iters) or power_iters < 0:
        raise ValueError(f"truncated_svd: power_iters must be an int >= 0, got {power_iters!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"truncated_svd: seed must be an int or None, got {seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _UpcastOperator:
    """A [B, n, m] of any floating dtype, for products with fp32 (float64 for float64 A) matrices:
    A @ X and A^T @ X, A upcast whole when small, else chunk by chunk (module docstring)."""

    def __init__(self, a: torch.Tensor):
        self.a = a
        self.dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        self.batch, self.n, self.m = a.shape
        self.device = a.device
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        small = a.numel() * itemsize <= _RESIDENT_BYTES
        self.resident = a.to(self.dtype) if a.dtype == self.dtype or small else None

    def blocks(self):
        """(matrices, columns, block): block = A[matrices][:, :, columns] in the compute dtype.
        Whole matrices per block where one fits in _CHUNK_BYTES, else slices of its columns."""
        if self.resident is not None:
            yield slice(None), slice(None), self.resident
            return
        yield from upcast_blocks(self.a, self.dtype, _CHUNK_BYTES)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """A @ x: [B, m, c] -> [B, n, c]."""
        out = torch.zeros(self.batch, self.n, x.shape[-1], dtype=self.dtype, device=self.a.device)
        for matrices, columns, block in self.blocks():
            out[matrices] += block @ x[matrices, columns]
        return out

    def rmatmul(self, x: torch.Tensor) -> torch.Tensor:
        """A^T @ x: [B, n, c] -> [B, m, c]."""
        out = torch.empty(self.batch, self.m, x.shape[-1], dtype=self.dtype, device=self.a.device)
        for matrices, columns, block in self.blocks():
            out[matrices, columns] = block.mT @ x[matrices]
        return out


class _Transposed:
    """A^T, through the operator of A."""

    def __init__(self, operator: _UpcastOperator):
        self.operator = operator
        self.batch, self.n, self.m = operator.batch, operator.m, operator.n
        self.dtype, self.device = operator.dtype, operator.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.rmatmul(x)

    def rmatmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.matmul(x)


# -- randomized (Halko-Martinsson-Tropp) --------------------------------------------------------
def _randomized_svd(operator: _UpcastOperator, k: int, l: int, power_iters: int, seed: int):
    q = _orthonormal_basis(_sketch(operator, l, seed).to(operator.dtype))
    for _ in range(power_iters):
        q = _orthonormal_basis(operator.rmatmul(q))  # the row space, then back: (A A^T)^q A Omega
        q = _orthonormal_basis(operator.matmul(q))
    small = operator.rmatmul(q).mT  # Q^T A: [B, l, m]
    u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    return q @ u_small[..., :k], s[..., :k], vh[..., :k, :]


def _orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR. Householder QR: Q is orthonormal even where Y is rank-deficient."""
    return torch.linalg.qr(y, mode="reduced").Q


def _sketch(operator: _UpcastOperator, l: int, seed: int) -> torch.Tensor:
    """Y = A Omega [B, n, l]: the Triton kernel where it runs, else torch (module docstring)."""
    a = operator.a
    # The kernel on a GPU only when asked for (FUSED_SKETCH: slower there); interpreted on the CPU (tests).
    if sketch_kernel.supports(a) and sketch_kernel.available(a.device) and (FUSED_SKETCH or not a.is_cuda):
        return sketch_kernel.sketch(a, l, seed)
    generator = torch.Generator(device=a.device).manual_seed(seed % 2**64)
    y = torch.zeros(operator.batch, operator.n, l, dtype=operator.dtype, device=a.device)
    for matrices, _, block in operator.blocks():  # Omega drawn per block: at most a block's rows of it at once
        omega = torch.randn(block.shape[0], block.shape[-1], l, generator=generator, dtype=operator.dtype,
                            device=a.device)
        y[matrices] += block @ omega
    return y


# -- randomized, bf16 on tensor cores ------------------------------------------------------------
# bf16 A on a GPU: every product with A runs on bf16 tensor cores through split_products
# (ITERATION_PARTS bf16 parts of the fp32 operand in the subspace iterations, three in the final
# projection), the bases come from Cholesky QR in float64 (orthonormalize.cholesky_qr), and
# the small SVD of B = Q^T A from the eigenpairs of B B^T in float64 (an l x l problem per matrix,
# l = k + oversample; where: SMALL_EIGH below). The fp32
# route above upcasts A and multiplies at fp32 speed without TF32. Off: the fp32 route for every
# input (bench/truncated_svd.py times both: "randomized" and "randomized, fp32 products"; H100 at
# 895a856: 3.58 against 7.14 ms at 8192 x 28672, k = 16, bench/results/truncated_svd_h100_895a856.log).
SPLIT_PRODUCTS = True
# The sketch's Omega: drawn by torch (bf16, materialized: m x l, small) unless this is on, when the
# Triton kernel generates it inside the product (kernels.sketch). Not faster on the H100: 8.96
# against 3.58 ms at 8192 x 28672, k = 16 at 895a856 (every row tile regenerates its Omega tiles;
# bench/results/truncated_svd_h100_895a856.log, "randomized, fused sketch"), 3.36 against 3.38 at
# 61ab227 (bench/results/truncated_svd_h100_61ab227.log), slower at k = 64 and 256 there.
FUSED_SKETCH = False


# bf16 parts of Q in the subspace iterations. One part leaves Q's columns rounded to bf16 (3
# digits), a perturbation of the subspace that the next orthonormalization does not undo, but the
# values come from the final projection (three parts), whose error is quadratic in the subspace's.
ITERATION_PARTS = 1


def _takes_split_products(a: torch.Tensor) -> bool:
    return SPLIT_PRODUCTS and split_products.available(a)


# Where the l x l eigen solves of B B^T run (linalg.small_eigh's routes): "auto" takes "jacobi" (on
# the device, inside the call's CUDA graph) for l <= its limit (32) where the extension has it,
# the device's torch.linalg.eigh from l = SMALL_EIGH_DEVICE_FROM, the host between. H100, one
# matrix (bench/probes/small_eigh_route at dba9e9d): l = 26 host 2.87 / numpy 15.7 / device 3.40 ms
# for the whole call, l = 74 3.85 / 4.11 / 3.99, l = 266 9.29 / 19.6 / 6.53.
SMALL_EIGH = "auto"
SMALL_EIGH_DEVICE_FROM = 128


def _small_eigh_route(l: int, device: torch.device) -> str:
    if SMALL_EIGH != "auto":
        return SMALL_EIGH
    if l <= small_eigh.jacobi_max_size(device):
        return "jacobi"
    return "device" if l >= SMALL_EIGH_DEVICE_FROM else "host"


# Repeated calls of a shape replay the split route's device work from CUDA graphs (linalg.graphs):
# the whole call where the small eigen solve runs on the device without the host ("jacobi"), else
# the sketch's basis and projection, then the assembly, with the small eigen solve between them.
_GRAPHS = graphs.GraphCache()


def _randomized_svd_split(a: torch.Tensor, k: int, l: int, power_iters: int, seed: int):
    batch, n, m = a.shape
    route = _small_eigh_route(l, a.device)
    if FUSED_SKETCH and sketch_kernel.available(a.device):
        q, small64, gram, failed = _split_basis_and_projection(a, sketch_kernel.sketch(a, l, seed), power_iters)
        u, s, vh, unsolved = _split_assembly(q, small64, *small_eigh.small_eigh(gram, route), k=k)
        return u, s, vh, failed | unsolved
    generator = torch.Generator(device=a.device).manual_seed(seed % 2**64)
    omega = torch.randn(batch, m, l, generator=generator, device=a.device, dtype=a.dtype)
    # The key holds what the captured work depends on: shapes, and the switches read while capturing.
    key = ("randomized_svd_split", tuple(a.shape), a.dtype, a.device, l, k, power_iters, ITERATION_PARTS,
           orthonormalize.LDLT_KERNEL, orthonormalize.LDLT_MAX_COLUMNS, route)
    if route == "jacobi":
        whole = functools.partial(_split_svd_from_omega, k=k, power_iters=power_iters)
        return _GRAPHS.run(key, whole, a, omega, in_place=(0,))
    stage_one = functools.partial(_split_from_omega, power_iters=power_iters)
    q, small64, gram, failed = _GRAPHS.run(key + ("sketch",), stage_one, a, omega, in_place=(0,))
    values, vectors, solved = small_eigh.small_eigh(gram, route)
    u, s, vh, unsolved = _GRAPHS.run(key + ("assembly",), functools.partial(_split_assembly, k=k),
                                     q, small64, values, vectors, solved)
    return u, s, vh, failed | unsolved


def _split_svd_from_omega(a: torch.Tensor, omega: torch.Tensor, k: int, power_iters: int):
    """The whole split route from Omega, with the small eigen solve on the device ("jacobi")."""
    q, small64, gram, failed = _split_from_omega(a, omega, power_iters)
    u, s, vh, unsolved = _split_assembly(q, small64, *small_eigh.small_eigh(gram, "jacobi"), k=k)
    return u, s, vh, failed | unsolved


def _split_from_omega(a: torch.Tensor, omega: torch.Tensor, power_iters: int):
    """_split_basis_and_projection from the sketch A Omega (Omega is bf16 already: one part is exact)."""
    return _split_basis_and_projection(a, split_products.split_bmm(a, omega, 1), power_iters)


def _split_basis_and_projection(a: torch.Tensor, y: torch.Tensor, power_iters: int):
    """From the sketch Y = A Omega: (Q [B, n, l] fp32, B = Q^T A [B, l, m] float64, B B^T, failed [B])."""
    # Cholesky QR without a check at each step (a check waits for the GPU): a matrix whose sketch
    # is rank-deficient is marked and redone by the caller (truncated_svd). One pass between
    # products, two for the basis B is projected on (orthonormalize.cholesky_qr).
    q, failed = cholesky_qr(y, passes=1 if power_iters else 2)
    for i in range(power_iters):
        # A (A^T Q), orthonormalized once per iteration, not after each half: the product's condition
        # is (sigma_1 / sigma_l)^2, well within Cholesky QR's reach in float64 (module orthonormalize).
        z = split_products.split_bmm(a.mT, q, ITERATION_PARTS)
        q, bad = cholesky_qr(split_products.split_bmm(a, z, ITERATION_PARTS), passes=2 if i + 1 == power_iters else 1)
        failed = failed | bad
    small64 = split_products.split_bmm_left(q.mT, a, 3).to(torch.float64)  # B = Q^T A: [batch, l, m]
    return q, small64, small64 @ small64.mT, failed


def _split_assembly(q: torch.Tensor, small64: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor,
                    solved: torch.Tensor, k: int):
    """fp32 (U, S, Vh) and unsolved [B] from the eigenpairs (ascending, [B, l] and [B, l, l]) of
    B B^T and the solver's flags."""
    evals = values.flip(-1)[..., :k]  # the top k, descending
    evecs = vectors.flip(-1)[..., :k]
    s = evals.clamp_min(0).sqrt()
    # Vh = S^-1 U_B^T B; a zero singular value (a rank-deficient or zero A) leaves its row at zero.
    inverse = torch.where(s > 0, 1.0 / s, 0.0)
    vh = inverse.unsqueeze(-1) * (evecs.mT @ small64)
    u = q.to(torch.float64) @ evecs
    return u.to(torch.float32), s.to(torch.float32), vh.to(torch.float32), ~solved


# -- Golub-Kahan-Lanczos --------------------------------------------------------------------------
def _lanczos_svd(operator: _UpcastOperator | _Transposed, k: int, steps: int, seed: int):
    """A V = U T with T upper bidiagonal (alphas on the diagonal, betas above) after ``steps``
    steps from a random unit first column of V; the SVD T = P S Qh gives the Ritz triplets U P,
    S, (V Qh^T)^T."""
    batch, n, m, dtype, device = operator.batch, operator.n, operator.m, operator.dtype, operator.device
    generator = torch.Generator(device=device).manual_seed(seed % 2**64)
    lefts = torch.zeros(batch, n, steps, dtype=dtype, device=device)
    rights = torch.zeros(batch, m, steps, dtype=dtype, device=device)
    alphas = torch.zeros(batch, steps, dtype=dtype, device=device)
    betas = torch.zeros(batch, steps, dtype=dtype, device=device)
    scale = torch.zeros(batch, dtype=dtype, device=device)  # largest coefficient so far: the breakdown yardstick

    start = torch.randn(batch, m, 1, generator=generator, dtype=dtype, device=device)
    rights[:, :, :1] = start / torch.linalg.vector_norm(start, dim=1, keepdim=True)
    for j in range(steps):
        u = operator.matmul(rights[:, :, j : j + 1])
        if j > 0:
            u -= betas[:, j - 1, None, None] * lefts[:, :, j - 1 : j]
        u, alphas[:, j] = _unit_orthogonal_to(u, lefts[:, :, :j], scale, generator)
        lefts[:, :, j : j + 1] = u
        scale = torch.maximum(scale, alphas[:, j])
        if j + 1 == steps:
            break  # the last beta and right vector are not part of T
        v = operator.rmatmul(u) - alphas[:, j, None, None] * rights[:, :, j : j + 1]
        v, betas[:, j] = _unit_orthogonal_to(v, rights[:, :, : j + 1], scale, generator)
        rights[:, :, j + 1 : j + 2] = v
        scale = torch.maximum(scale, betas[:, j])

    bidiagonal = torch.diag_embed(alphas) + torch.diag_embed(betas[:, :-1], offset=1)
    p, s, qh = torch.linalg.svd(bidiagonal)
    return lefts @ p[..., :k], s[..., :k], (rights @ qh[..., :k, :].mT).mT


def _unit_orthogonal_to(x: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, generator: torch.Generator):
    """(x orthogonalized against the columns of ``basis`` and normalized, its norm before that):
    x [B, d, 1], basis [B, d, j] orthonormal. Where that norm is negligible against ``scale``
    (breakdown: A's range or row space is exhausted, or A is 0), a random unit vector orthogonal to
    the basis replaces x and the norm (a coefficient of T) is set to 0, which keeps A V = U T."""
    x = _orthogonalize_twice(x, basis)
    norm = torch.linalg.vector_norm(x, dim=(1, 2))
    broken = norm <= 16 * torch.finfo(x.dtype).eps * scale
    if bool(broken.any()):
        fresh = _orthogonalize_twice(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device), basis)
        fresh = fresh / torch.linalg.vector_norm(fresh, dim=(1, 2), keepdim=True)
        safe_norm = torch.where(broken, 1.0, norm)  # no 0/0 in the branch torch.where discards
        x = torch.where(broken[:, None, None], fresh, x / safe_norm[:, None, None])
        return x, torch.where(broken, 0.0, norm)
    return x / norm[:, None, None], norm


def _orthogonalize_twice(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Classical Gram-Schmidt, twice ("twice is enough", Giraud et al. 2005): one pass leaves a
    component along the basis of the order of eps times the cancellation; the second removes it."""
    for _ in range(2):
        x = x - basis @ (basis.mT @ x)
    return x
