"""Independent float64 truth for the tests: torch.linalg.svdvals in float64 + spectrum.py's formulas."""

from __future__ import annotations

import math

import torch


def reference_stats(w: torch.Tensor) -> dict:
    w = w.detach().to(torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0)
    w = w.reshape(w.shape[0], -1) if w.dim() > 2 else w
    n, m = w.shape
    s = torch.linalg.svdvals(w)  # descending
    q25, q75 = torch.quantile(s, 0.25), torch.quantile(s, 0.75)
    sigma = (q75 - q25) / 1.349
    beta = min(n, m) / max(n, m)
    tau = sigma * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal = s[s > tau].sum()
    noise = s[s <= tau].sum() if (s <= tau).any() else torch.tensor(1.0, dtype=torch.float64)
    return {
        "snr": float(signal / noise / s[0]) if s[0] > 0 else 0.0,
        "n_signal": int((s > tau).sum()),
        "n_noise": int((s <= tau).sum()),
        "sigma_max": float(s[0]),
        "sigma": float(sigma),
        "threshold": float(tau),
    }


def spectrum_select(entries: list[tuple[str, str, float]], top_percent: float) -> list[str]:
    """Spectrum's rule from (name, type, snr): per type, stable sort desc, keep int(len * p / 100)."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for name, t, snr in entries:
        groups.setdefault(t, []).append((name, snr))
    out = []
    for members in groups.values():
        ranked = sorted(members, key=lambda x: x[1], reverse=True)
        out += [name for name, _ in ranked[: int(len(members) * top_percent / 100)]]
    return out
