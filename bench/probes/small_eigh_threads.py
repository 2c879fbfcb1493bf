"""truncated_svd at k = 16 (bf16, replayed from CUDA graphs) with its small host eigen solve on one
torch thread (host_threads.one_torch_thread) against all of the host's, interleaved in rounds of 5
calls, 30 calls each, on a GPU.

    python3 bench/probes/small_eigh_threads.py
"""
import contextlib, importlib, sys, time, torch
sys.path.insert(0, "bench")
from workloads import trained_like
from spectrum_fast.linalg import truncated_svd
mod = importlib.import_module("spectrum_fast.linalg.truncated_svd")
real = mod.one_torch_thread
for n, m in ((4096, 14336), (8192, 28672)):
    a = trained_like(n, m, seed=5, device="cuda")
    for _ in range(3):
        truncated_svd(a, 16, oversample=10, power_iters=2)
    res = {"one thread": [], "all threads": []}
    for rnd in range(6):
        for name, ctx in (("one thread", real), ("all threads", contextlib.nullcontext)):
            mod.one_torch_thread = ctx
            for _ in range(5):
                torch.cuda.synchronize(); t = time.perf_counter()
                truncated_svd(a, 16, oversample=10, power_iters=2)
                torch.cuda.synchronize(); res[name].append((time.perf_counter() - t) * 1e3)
    for name, v in res.items():
        v.sort(); print(f"{n}x{m} k=16 {name}: median {v[len(v)//2]:.3f} ms, min {v[0]:.3f} (30 calls, interleaved)", flush=True)
