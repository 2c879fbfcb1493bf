"""Triton kernels, one kernel family per file; each has a plain-torch reference that its tests
compare it with (tests/test_kernels_<family>.py).

stats -> snr_statistics_triton (reference: ops.stats.snr_statistics_torch)

Triton is optional: importing these modules never needs it; ``available(device)`` says whether a
kernel can run (CUDA, or the CPU under TRITON_INTERPRET=1).
"""
