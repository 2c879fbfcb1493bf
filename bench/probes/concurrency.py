"""Probe (device): do host threads (one CUDA stream each) or CPU LAPACK overlap cuSOLVER syevd?"""
import time, threading
import torch

dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False


def sync_time(fn, reps=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


for n, count in [(4096, 16), (1024, 64), (2048, 32)]:
    X = torch.randn(n, n, device=dev, dtype=torch.float64)
    G = X @ X.T
    Gs = [G + i * 1e-3 for i in range(count)]

    def seq():
        for g in Gs:
            torch.linalg.eigvalsh(g)

    def threaded(k):
        def f():
            def work(idx):
                s = torch.cuda.Stream()
                with torch.cuda.stream(s):
                    for i in idx:
                        torch.linalg.eigvalsh(Gs[i])
                s.synchronize()
            th = [threading.Thread(target=work, args=(range(j, count, k),)) for j in range(k)]
            [t.start() for t in th]; [t.join() for t in th]
        return f
    row = {"n": n, "count": count, "seq_ms": sync_time(seq) * 1e3}
    for k in (2, 4, 8):
        row[f"threads{k}_ms"] = sync_time(threaded(k)) * 1e3
    print(row, flush=True)

# CPU LAPACK on the host at the same time
torch.set_num_threads(16)
X = torch.randn(4096, 4096, dtype=torch.float64)
G = X @ X.T
t = time.perf_counter(); torch.linalg.eigvalsh(G); print("cpu eigvalsh 4096 fp64 16 threads s", time.perf_counter() - t, flush=True)
t = time.perf_counter(); torch.linalg.eigvalsh(G); print("cpu eigvalsh 4096 fp64 16 threads s", time.perf_counter() - t, flush=True)
import scipy.linalg as sl
Gn = G.numpy()
for drv in ("evd", "evr", "ev"):
    t = time.perf_counter(); sl.eigh(Gn, eigvals_only=True, driver=drv); print("scipy", drv, time.perf_counter() - t, flush=True)
print(torch.__config__.show()[:600])
