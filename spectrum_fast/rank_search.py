"""Rank search by measured step time: from a theoretical rank (the energy kept, or the MP
threshold's signal count), time the LowRankLinear of every rank nearby and keep the fastest allowed.

Why measure: the step time of a rank-r layer is not smooth in r. Matrix units work in tiles, so a
rank one past a multiple of 64 can cost a whole extra tile, and a rank just below one can run no
faster than the multiple itself (rank quantization, ranks.quantize_rank). The table of measured
times per rank is what shows whether rounding pays on a given device.

The rule of ``best_rank_near`` (r0 = the start rank, cap = ranks.max_saving_rank(n, m)):
- measured: every rank in [max(1, r0 - window), min(r0 + window, cap)], plus the multiples of
  ``quantize`` just below and just above r0 (the latter = quantize_rank(r0, quantize, cap));
- allowed: r0 <= r <= max(r0 + window, quantize_rank(r0, quantize, cap)), and r <= cap. Never below
  r0, since fewer singular values than the theoretical rank keep less energy than asked; at most
  ``window`` ranks above it, or up to the quantized rank, which is the parameter budget the search
  may spend: (upper bound) * (n + m) weights;
  with ``keep_energy=False`` the lower bound is max(1, r0 - window) instead;
- chosen: the allowed rank of least measured time, the smaller rank on a tie (fewer parameters).
Ranks measured below r0 are reported (they show what the energy constraint costs) but never chosen
unless keep_energy is False.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .errors import SelectionError
from .lowrank import FACTORS, LowRankLinear
from .ranks import max_saving_rank, quantize_rank

# timer(step, device, repeats, layer) -> seconds of one step of ``layer`` (a LowRankLinear; its
# ``rank`` says which). Injectable so tests can check the search with a deterministic clock that
# reads layer.rank, and so the benches can pass their own (bench/timing.py).
Timer = Callable[[Callable[[], object], torch.device, int, LowRankLinear], float]


def median_step_seconds(step: Callable[[], object], device: torch.device, repeats: int, layer=None,
                        warmup: int = 3) -> float:
    """Median seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones (the first calls
    allocate gradients, workspaces and pick kernels). On CUDA each call is bracketed by events and
    the device synchronized once at the end, so the host's launch overhead between calls does not
    count and the queue stays full, as it does in training; on a CPU, time.perf_counter per call.
    ``layer`` is not read: it is in the Timer signature for timers that need to know what they time."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(start.elapsed_time(end) for start, end in events) / 1000
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_per_rank(n: int, m: int, ranks: Iterable[int], *, batch_tokens: int, device="cpu",
                  dtype: torch.dtype = torch.float32, repeats: int = 10, train: bool = True,
                  freeze: str | None = None, timer: Timer | None = None, seed: int = 0) -> dict[int, float]:
    """-> {rank: seconds of one step} of a LowRankLinear(in_features=m, out_features=n, rank) alone,
    on a random [batch_tokens, m] input, in the order given (duplicates timed once).

    train: a step is forward + backward (the input requires grad, as it does for every layer but
        the first in a network, so backward also computes the input gradient); False: forward
        only, under no_grad (inference).
    freeze: None, or the factor ("first" or "second") whose weight is frozen (no weight gradient),
        as SequentialFreezing leaves it during the other factor's phase.
    timer: timer(step, device, repeats, layer) -> seconds; default median_step_seconds.
    """
    if freeze is not None and freeze not in FACTORS:
        raise SelectionError(f"time_per_rank: freeze must be None, 'first' or 'second', got {freeze!r}")
    device = torch.device(device)
    timer = timer or median_step_seconds
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch_tokens, m, generator=generator).to(device=device, dtype=dtype).requires_grad_(train)
    # A fixed random output gradient: backward from y.sum() would feed a constant, which is no cheaper
    # to multiply but is not what a loss sends back.
    grad_out = torch.randn(batch_tokens, n, generator=generator).to(device=device, dtype=dtype)
    seconds: dict[int, float] = {}
    for rank in ranks:
        if rank in seconds:
            continue
        if not 1 <= rank <= min(n, m):
            raise SelectionError(f"time_per_rank: rank must be from 1 to min({n}, {m}) = {min(n, m)}, got {rank!r}")
        layer = LowRankLinear(m, n, rank, bias=False, device=device, dtype=dtype)
        if freeze is not None:
            getattr(layer, freeze).weight.requires_grad_(False)

        def train_step(layer=layer):
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(grad_out)

        def inference_step(layer=layer):
            with torch.no_grad():
                return layer(x)

        seconds[rank] = timer(train_step if train else inference_step, device, repeats, layer)
        del layer
    return seconds


@dataclass(frozen=True)
class RankSearch:
    shape: tuple[int, int]  # (n, m) = (out_features, in_features)
    start_rank: int
    rank: int  # the chosen rank
    allowed: tuple[int, int]  # (lowest, highest) rank the rule allows
    seconds: dict[int, float]  # every measured rank -> seconds of one step, ascending by rank

    @property
    def speedup(self) -> float:
        """Step time at the start rank over step time at the chosen rank."""
        return self.seconds[self.start_rank] / self.seconds[self.rank]

    def __str__(self) -> str:
        n, m = self.shape
        lines = [f"{n} x {m}: start rank {self.start_rank}, allowed {self.allowed[0]}..{self.allowed[1]}, chosen "
                 f"{self.rank} ({self.speedup:.2f}x the start rank's step)", "| rank | ms per step | |", "|---|---|---|"]
        lo, hi = self.allowed
        for r, s in self.seconds.items():
            note = "chosen" if r == self.rank else ("start" if r == self.start_rank else
                                                   ("" if lo <= r <= hi else "not allowed"))
            lines.append(f"| {r} | {1000 * s:.3f} | {note} |")
        return "\n".join(lines)


def search_bounds(n: int, m: int, start_rank: int, window: int, quantize: int | None,
                  keep_energy: bool = True) -> tuple[list[int], tuple[int, int]]:
    """-> (ranks to measure, ascending; (lowest, highest) allowed rank): the rule in the module docstring."""
    cap = max_saving_rank(n, m)
    if not isinstance(start_rank, int) or isinstance(start_rank, bool) or not 1 <= start_rank <= cap:
        raise SelectionError(f"best_rank_near: start_rank must be an int from 1 to {cap} (the largest rank whose "
                             f"factors are smaller than the {n} x {m} weight), got {start_rank!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise SelectionError(f"best_rank_near: window must be an int >= 0, got {window!r}")
    if quantize is not None and (not isinstance(quantize, int) or isinstance(quantize, bool) or quantize < 1):
        raise SelectionError(f"best_rank_near: quantize must be an int >= 1 or None, got {quantize!r}")
    rounded_up = quantize_rank(start_rank, quantize, cap)
    lowest = start_rank if keep_energy else max(1, start_rank - window)
    highest = min(max(start_rank + window, rounded_up), cap)
    measured = set(range(max(1, start_rank - window), min(start_rank + window, cap) + 1)) | {rounded_up}
    if quantize is not None and quantize > 1 and start_rank >= quantize:
        measured.add(start_rank // quantize * quantize)  # the multiple just below: shows what rounding down would give
    return sorted(measured), (lowest, highest)


def best_rank_near(n: int, m: int, start_rank: int, *, window: int = 8, quantize: int | None = 64,
                   keep_energy: bool = True, batch_tokens: int, device="cpu", dtype: torch.dtype = torch.float32,
                   repeats: int = 10, train: bool = True, freeze: str | None = None,
                   timer: Timer | None = None) -> RankSearch:
    """The fastest rank near ``start_rank`` for an n x m weight (out x in), by measured step time of
    the layer alone (time_per_rank), under the rule in the module docstring. -> RankSearch."""
    measured, (lowest, highest) = search_bounds(n, m, start_rank, window, quantize, keep_energy)
    seconds = time_per_rank(n, m, measured, batch_tokens=batch_tokens, device=device, dtype=dtype, repeats=repeats,
                            train=train, freeze=freeze, timer=timer)
    allowed = [r for r in measured if lowest <= r <= highest]
    chosen = min(allowed, key=lambda r: (seconds[r], r))
    return RankSearch((n, m), start_rank, chosen, (lowest, highest), seconds)
