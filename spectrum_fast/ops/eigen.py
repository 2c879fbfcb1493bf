"""All eigenvalues (ascending) of a batch of symmetric matrices.

Backend today: torch.linalg.eigvalsh (cuSOLVER syevd on CUDA, LAPACK on CPU). Measured on the
H100 (bench/probes/concurrency.log): batched calls, extra CUDA streams and host threads do not
speed it up, so matrices go one call per batch. The csrc engine (a later issue) slots in here.
"""

from __future__ import annotations

import torch


def eigvalsh(g: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of symmetric ``g`` ([k, k] or [B, k, k]), ascending, in g's dtype."""
    return torch.linalg.eigvalsh(g)
