"""Probe (device): which Gram/eigen precision meets 1e-5 SNR error, and what each costs.

Run: python bench/probes/precision_and_speed.py  (writes $OUT/probe.json when OUT is set)
"""
import json, os, time
import torch

torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}


def timed(fn, reps=5, warm=1):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def spiked(n, m, ratio, seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    k = min(n, m)
    bulk = torch.randn(n, m, device=dev, dtype=torch.float64, generator=g) / m ** 0.5
    r = max(1, k // 16)
    U = torch.linalg.qr(torch.randn(n, r, device=dev, dtype=torch.float64, generator=g))[0]
    V = torch.linalg.qr(torch.randn(m, r, device=dev, dtype=torch.float64, generator=g))[0]
    s = ratio * torch.arange(1, r + 1, device=dev, dtype=torch.float64) ** -0.7
    return (bulk + (U * s) @ V.T).to(torch.bfloat16)


def snr_from_sv(S, n, m):
    S = S.double().sort(descending=True).values
    q = torch.quantile(S, torch.tensor([0.25, 0.75], dtype=S.dtype, device=S.device))
    sigma = (q[1] - q[0]) / 1.349
    beta = min(n, m) / max(n, m)
    tau = sigma * (1 + beta ** 0.5)
    sig = S[S > tau].sum(); nm = S <= tau
    noise = S[nm].sum() if nm.any() else torch.tensor(1.0, dtype=S.dtype)
    return float(sig / noise / S[0]), int((S > tau).sum())


def gram(W, how):
    n, m = W.shape
    A = W if n <= m else W.T
    if how == "fp32out":
        return torch.mm(A, A.T, out_dtype=torch.float32)
    if how == "fp64":
        A64 = A.double()
        return A64 @ A64.T
    raise ValueError(how)


acc = []
for (n, m) in [(1024, 4096), (4096, 4096), (4096, 14336), (2048, 7168)]:
    for ratio in [8.0, 60.0, 400.0]:
        W = spiked(n, m, ratio, seed=n + m + int(ratio))
        truth, cnt = snr_from_sv(torch.linalg.svdvals(W.double(), driver="gesvd"), n, m)
        row = {"shape": [n, m], "ratio": ratio, "truth": truth, "count": cnt}
        for gh in ["fp32out", "fp64"]:
            G = gram(W, gh)
            for eh in ["fp32", "fp64"]:
                ev = torch.linalg.eigvalsh(G.to(torch.float32 if eh == "fp32" else torch.float64))
                S = ev.double().clamp_min(0).sqrt()
                s, c = snr_from_sv(S, n, m)
                row[f"{gh}+{eh}"] = [abs(s - truth) / truth, c - cnt]
        ref32 = torch.linalg.svdvals(W.float())
        s, c = snr_from_sv(ref32, n, m)
        row["ref_svdvals_fp32"] = [abs(s - truth) / truth, c - cnt]
        acc.append(row); print(row, flush=True)
res["accuracy"] = acc

speed = []
for nsz in [1024, 2048, 4096, 8192]:
    X = torch.randn(nsz, nsz, device=dev, dtype=torch.float64)
    G64 = X @ X.T; G32 = G64.float()
    t32 = timed(lambda: torch.linalg.eigvalsh(G32), reps=3 if nsz == 8192 else 5)
    t64 = timed(lambda: torch.linalg.eigvalsh(G64), reps=3 if nsz == 8192 else 5)
    speed.append({"n": nsz, "eig32_ms": t32 * 1e3, "eig64_ms": t64 * 1e3}); print(speed[-1], flush=True)
res["eig"] = speed

# streams: 8 x 4096 fp64 eigvalsh, sequential vs over 4 / 8 streams
X = torch.randn(4096, 4096, device=dev, dtype=torch.float64); G = X @ X.T
Gs = [G.clone() for _ in range(8)]
def seq():
    for g in Gs: torch.linalg.eigvalsh(g)
def streamed(k):
    ss = [torch.cuda.Stream() for _ in range(k)]
    def f():
        cur = torch.cuda.current_stream()
        for i, g in enumerate(Gs):
            s = ss[i % k]; s.wait_stream(cur)
            with torch.cuda.stream(s): torch.linalg.eigvalsh(g)
        for s in ss: cur.wait_stream(s)
    return f
res["streams4096x8"] = {"seq_ms": timed(seq, 3) * 1e3, "s4_ms": timed(streamed(4), 3) * 1e3, "s8_ms": timed(streamed(8), 3) * 1e3}
print(res["streams4096x8"], flush=True)
X = torch.randn(1024, 1024, device=dev, dtype=torch.float64); G = X @ X.T
Gs = [G.clone() for _ in range(32)]
res["streams1024x32"] = {"seq_ms": timed(seq, 3) * 1e3, "s8_ms": timed(streamed(8), 3) * 1e3,
                          "batched_ms": timed(lambda: torch.linalg.eigvalsh(torch.stack(Gs)), 3) * 1e3}
print(res["streams1024x32"], flush=True)

W = torch.randn(14336, 4096, device=dev).to(torch.bfloat16)
res["gram_4096x14336"] = {"fp32out_ms": timed(lambda: gram(W, "fp32out")) * 1e3, "fp64_ms": timed(lambda: gram(W, "fp64")) * 1e3}
W2 = torch.randn(4096, 4096, device=dev).to(torch.bfloat16)
res["svdvals_fp32_4096_ms"] = timed(lambda: torch.linalg.svdvals(W2.float()), 3) * 1e3
res["svdvals_fp32_14336x4096_ms"] = timed(lambda: torch.linalg.svdvals(W.float()), 3) * 1e3
print(res["gram_4096x14336"], res["svdvals_fp32_4096_ms"], res["svdvals_fp32_14336x4096_ms"])
out = os.environ.get("OUT")
if out:
    json.dump(res, open(os.path.join(out, "probe.json"), "w"), indent=1)
