"""Eigenpairs of many small symmetric float64 matrices (the randomized SVD's l x l Grams B B^T,
l = k + oversample), where they run best: ``small_eigh(gram, route) -> (eigenvalues ascending,
eigenvectors as columns, converged [B] bool)``, all on gram's device.

Routes:
- "host": torch on the CPU, one thread (a few dozen rows: one thread beats the host's many;
  host_threads), copied back. The device waits for it: a round trip per call.
- "numpy": LAPACK through numpy, one matrix after another on the host.
- "device": torch.linalg.eigh on the GPU (cuSOLVER); it reads cuSOLVER's flags on the host, a
  synchronization, and raises where one did not converge.
- "jacobi": cuSOLVER's batched Jacobi solver through the extension (csrc/small_eigh_jacobi.cu),
  n <= jacobi_max_size(): nothing read on the host, so it runs inside a CUDA graph; the flags
  come back as ``converged`` (False also for a matrix with a NaN or an infinity) for the caller
  to check once its work is done.
The first three return converged all True (they raise instead).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _extension
from ..host_threads import one_torch_thread

ROUTES = ("host", "numpy", "device", "jacobi")


def jacobi_max_size(device: torch.device) -> int:
    """The largest n the "jacobi" route takes on ``device``; 0 where it cannot run there (a CPU
    device, the extension not built, or built without cuSOLVER)."""
    ext = _extension.cuda_ops() if device.type == "cuda" else None
    if ext is None or not hasattr(ext, "small_eigh_jacobi"):
        return 0
    return int(ext.small_eigh_jacobi_max_size())


def small_eigh(gram: torch.Tensor, route: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eigenvalues [B, n] ascending, eigenvectors [B, n, n] as columns, converged [B]) of the
    symmetric float64 ``gram`` [B, n, n] (lower triangles read), on gram's device."""
    if route == "jacobi":
        values, vectors, info = _extension.cuda_ops().small_eigh_jacobi(gram)
        # The solver reports a NaN matrix converged, with finite values (its rotation tests are false
        # for NaN): a non-finite input is marked here.
        return values, vectors, (info == 0) & torch.isfinite(gram).all(-1).all(-1)
    if route == "device":
        values, vectors = torch.linalg.eigh(gram)
    elif route == "numpy":
        values, vectors = (torch.from_numpy(x).to(gram.device) for x in np.linalg.eigh(gram.cpu().numpy()))
    elif route == "host":
        with one_torch_thread():
            values, vectors = (x.to(gram.device) for x in torch.linalg.eigh(gram.cpu()))
    else:
        raise ValueError(f"small_eigh: route must be one of {ROUTES}, got {route!r}")
    return values, vectors, torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
