"""Peak memory as the scan sees it: host memory the process owns, and GPU memory allocated."""

from __future__ import annotations

import torch


def host_anon_bytes() -> int | None:
    """Anonymous resident memory of this process (excludes mmap'ed file pages, which are page cache)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pinned_host_bytes() -> int:
    """Page-locked host memory held by torch's pinned allocator (the eigen stage's device-to-host
    copies, cached blocks included). It is not in RssAnon: the CUDA driver maps it. The staging
    ring's buffers (staging.PinnedRing) are ordinary memory page-locked in place, so RssAnon
    counts them already."""
    try:
        stats = torch.cuda.host_memory_stats()
    except (AttributeError, RuntimeError, AssertionError):  # older torch, or no CUDA
        return 0
    # the key names changed across torch versions: take whichever this one has
    return max(stats.get("reserved_bytes.current", 0), stats.get("allocated_bytes.current", 0))


class PeakTracker:
    """Samples host memory between batches (anonymous RSS, plus pinned buffers on a GPU scan);
    reads the CUDA allocator's own peak, less what was allocated when the scan began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.host_peak = host_anon_bytes()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._gpu_base = torch.cuda.memory_allocated(device)

    def sample(self) -> None:
        now = host_anon_bytes()
        if now is not None and self.device.type == "cuda":
            now += pinned_host_bytes()
        if now is not None and (self.host_peak is None or now > self.host_peak):
            self.host_peak = now

    @property
    def gpu_peak(self) -> int | None:
        """GPU bytes the scan itself took at its peak: what was allocated before it (a model on
        the GPU, the weights of a resident source) is not counted."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) - self._gpu_base
