"""The two-stage eigen route (dense -> band on the device, band -> eigenvalues by LAPACK dsbev)
against float64 LAPACK syevd and a float64 SVD, on fresh random matrices every run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import spectrum_fast
from spectrum_fast.ops import band, band_eigen, eigen

from test_exact import KINDS, SHAPES, check_row

pytestmark = pytest.mark.skipif(not band_eigen.available(), reason="the two-stage route needs scipy")

SEED = random.SystemRandom().randrange(2**31)


def random_gram(batch, n, seed, kind="spiked", device="cpu"):
    g = torch.Generator().manual_seed(SEED + seed)
    w = torch.randn(batch, n, 2 * n + 3, generator=g, dtype=torch.float64)
    if kind == "spiked":
        w[:, : max(1, n // 10)] *= 300.0  # spike ratio ~300 in singular values
    elif kind == "rank_deficient":
        w[:, n // 2 :] = w[:, : n - n // 2]
    elif kind == "zero":
        w.zero_()
    return (w @ w.mT).to(device)


def band_of_width(a, width):
    n = a.shape[-1]
    i = torch.arange(n, device=a.device)
    return (i[:, None] - i[None, :]).abs() <= width


@pytest.mark.parametrize("n,width", [(1, 4), (2, 4), (5, 4), (6, 4), (33, 32), (34, 32), (100, 8), (257, 32), (130, 1)])
@pytest.mark.parametrize("kind", ["spiked", "rank_deficient", "zero"])
def test_band_reduction_keeps_the_spectrum(n, width, kind):
    g = random_gram(3, n, n * 31 + width, kind)
    truth = torch.linalg.eigvalsh(g)
    a = band.reduce_to_band_(g.clone(), width)
    assert torch.isfinite(a).all()
    outside = ~band_of_width(a, width)
    assert (a[:, outside] == 0).all(), "entries outside the band must be exactly zero"
    rows = band.lower_band(a, width).numpy()
    got = torch.from_numpy(np.stack([band_eigen.band_eigvalsh(rows[b].copy()) for b in range(3)]))
    scale = truth.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    err = ((got - truth).abs() / scale).max().item()
    assert err < 1e-13, (SEED, err)


def test_lower_band_layout_is_lapack_lower_band_storage():
    a = torch.arange(1, 26, dtype=torch.float64).reshape(1, 5, 5)
    a = a + a.mT
    rows = band.lower_band(a, 2)[0]
    for j in range(5):
        for d in range(3):
            assert rows[j, d] == (a[0, j + d, j] if j + d < 5 else 0)


def test_band_eigvalsh_rejects_non_contiguous_and_wrong_dtype():
    with pytest.raises(ValueError):
        band_eigen.band_eigvalsh(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        band_eigen.band_eigvalsh(np.ones((3, 4))[:, :3])


def test_deferred_two_stage_matches_syevd_in_batches():
    g = random_gram(5, 150, 7)
    truth = torch.linalg.eigvalsh(g)
    pending = eigen.eigvalsh_deferred(g.clone(), route="two_stage")
    got = pending.result()
    assert pending.done() and got.shape == (5, 150) and got.dtype == torch.float64
    assert ((got - truth).abs().max() / truth.abs().max()).item() < 1e-13


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scan_two_stage_matches_float64_svd(kind):
    weights = {f"model.layers.{i}.mlp.p{n}x{m}.weight": KINDS[kind](n, m, 100 * i) for i, (n, m) in enumerate(SHAPES)}
    result = spectrum_fast.scan(weights, device="cpu", progress=False, eigen_route="two_stage", max_batch_bytes=1)
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w, (kind, row.name))


def test_unknown_route_is_a_clear_error():
    with pytest.raises(spectrum_fast.SpectrumFastError, match="eigen_route"):
        spectrum_fast.scan({"model.layers.0.mlp.p.weight": torch.randn(8, 8)}, device="cpu", eigen_route="magic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("n", [520, 1024])
def test_two_stage_on_gpu_matches_syevd(n):
    g = random_gram(3, n, n, "spiked", device="cuda")
    truth = torch.linalg.eigvalsh(g).cpu()
    got = eigen.eigvalsh_deferred(g.clone(), route="two_stage").result()
    assert ((got - truth).abs().max() / truth.abs().max()).item() < 1e-13


def test_backlog_counts_band_solves_no_worker_has_started():
    import threading
    import time

    gate = threading.Event()
    started = []

    def blocked(i):
        started.append(i)
        gate.wait(30)
        return i

    workers = band_eigen.host_workers()
    futures = [band_eigen.submit_call(blocked, i) for i in range(workers + 3)]
    deadline = time.time() + 10
    while len(started) < workers and time.time() < deadline:
        time.sleep(0.01)
    assert band_eigen.backlog() == 3
    gate.set()
    assert [f.result() for f in futures] == list(range(workers + 3))
    assert band_eigen.backlog() == 0


def test_auto_route_balances_gpu_and_host(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(band_eigen, "backlog", lambda: 0)
    monkeypatch.setattr(eigen, "gpu_stage2_available", lambda device: True)
    assert eigen.choose_route(4096, cuda, torch.float64) == "two_stage_gpu"  # the GPU kernels first
    assert eigen.choose_route(8192, cuda, torch.float64) == "two_stage"  # too long a chase per matrix
    monkeypatch.setattr(eigen, "float32_to_gpu_route", lambda device: True)  # measured: the H100
    assert eigen.choose_route(4096, cuda, torch.float32) == "two_stage_gpu"  # solved there in float64
    assert eigen.choose_route(8192, cuda, torch.float32) == "syevd"  # the host bands are float64 only
    assert eigen.choose_route(256, cuda, torch.float32) == "syevd"
    assert eigen.choose_route(4096, cuda, torch.float16) == "syevd"
    monkeypatch.setattr(eigen, "float32_to_gpu_route", lambda device: False)  # GPUs not measured
    assert eigen.choose_route(4096, cuda, torch.float32) == "syevd"
    monkeypatch.setattr(eigen, "gpu_stage2_available", lambda device: False)
    assert eigen.choose_route(4096, cuda, torch.float64) == "two_stage"  # no Triton: host bands
    assert eigen.choose_route(256, cuda, torch.float64) == "syevd"  # small: syevd is as fast
    assert eigen.choose_route(4096, cuda, torch.float32) == "syevd"  # no Triton: nothing but syevd
    monkeypatch.setattr(band_eigen, "backlog", lambda: band_eigen.host_workers())
    assert eigen.choose_route(4096, cuda, torch.float64) == "syevd"  # host busy, no Triton: cuSOLVER
    monkeypatch.setattr(eigen, "AUTO_ROUTES", ("two_stage", "two_stage_gpu", "syevd"))
    monkeypatch.setattr(eigen, "gpu_stage2_available", lambda device: True)
    assert eigen.choose_route(4096, cuda, torch.float64) == "two_stage_gpu"  # host busy: next in AUTO_ROUTES
    monkeypatch.setattr(band_eigen, "backlog", lambda: 0)
    assert eigen.choose_route(4096, cuda, torch.float64) == "two_stage"  # the order is AUTO_ROUTES'


def test_float32_goes_to_the_gpu_route_only_where_measured(monkeypatch):
    """ops.eigen.float32_to_gpu_route: compute capability 9.0 (the H100, where the GPU route beat
    float32 syevd), not a GPU with slow float64 (8.6: most consumer cards), never the CPU."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert eigen.float32_to_gpu_route(torch.device("cuda"))
    assert not eigen.float32_to_gpu_route(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert not eigen.float32_to_gpu_route(torch.device("cuda"))


def test_syevd_in_slices_matches_one_call(monkeypatch):
    """The syevd route solves big batches a few matrices per call (bounding eigvalsh's input copy);
    the slices must give what one call gives, in order."""
    g = random_gram(7, 24, seed=11)
    truth = torch.linalg.eigvalsh(g)
    monkeypatch.setattr(eigen, "_SYEVD_CALL_BYTES", 2 * 24 * 24 * 8)  # 2 matrices per call
    got = eigen.eigvalsh(g.clone(), route="syevd")
    torch.testing.assert_close(got, truth, rtol=0, atol=0)
    pending = eigen.eigvalsh_deferred(g.clone(), route="syevd").result()
    torch.testing.assert_close(pending, truth, rtol=0, atol=0)


def test_gpu_batch_plan_keeps_the_peak_within_the_limit():
    """The planner's arithmetic (no GPU needed): batch bytes + upcast chunk + eigen extra <= limit;
    syevd dropped for a shape whose workspace alone would break the limit."""
    from spectrum_fast.engine import gpu_batch_plan, matrix_device_bytes
    from spectrum_fast.ops.gram import _CHUNK_BYTES

    limit = 3 << 29  # 1.5 GiB
    plan = gpu_batch_plan(limit)
    budget, route = plan(4096, 14336, "bfloat16")
    assert route == "auto"
    assert budget + _CHUNK_BYTES + eigen.syevd_extra_bytes(4096) == limit
    assert budget // matrix_device_bytes(4096, 14336, "bfloat16") >= 2
    budget, route = plan(28672, 8192, "bfloat16")  # syevd's workspace at k=8192 is ~2.5 GiB
    per_matrix = matrix_device_bytes(28672, 8192, "bfloat16")
    assert route == "two_stage"
    assert budget == (limit - _CHUNK_BYTES) * per_matrix // (per_matrix + eigen.two_stage_extra_bytes(8192))
    # forced syevd keeps syevd and counts its workspace (a batch of one then, above the limit)
    budget, route = gpu_batch_plan(limit, eigen_route="syevd")(28672, 8192, "bfloat16")
    assert route == "syevd" and budget < 0
    batches = spectrum_fast.engine.plan_batches(
        [t for t in _tasks(3, 28672, 8192)], gpu_batch_plan(limit, eigen_route="syevd"))
    assert [len(b.tasks) for b in batches] == [1, 1, 1]


def test_gpu_batch_plan_counts_on_the_gpu_route_where_auto_takes_it(monkeypatch):
    """Where "auto" will take the GPU two-stage route, the planner plans for it: no syevd
    workspace, room for the two-stage temporaries; elsewhere nothing changes."""
    from spectrum_fast.engine import gpu_batch_plan, matrix_device_bytes
    from spectrum_fast.ops.gram import _CHUNK_BYTES

    limit = 3 << 29
    monkeypatch.setattr(eigen, "gpu_stage2_available", lambda device: True)
    monkeypatch.setattr(eigen, "CHASE_POOL_MATRICES", 32)  # its waiting bands count too
    monkeypatch.setattr(eigen, "CHASE_POOL_MAX_N", 4096)
    plan = gpu_batch_plan(limit, device=torch.device("cuda"))
    budget, route = plan(4096, 14336, "bfloat16")
    per_matrix = matrix_device_bytes(4096, 14336, "bfloat16")
    assert route == "two_stage_gpu"
    fixed = _CHUNK_BYTES + eigen.chase_pool_bytes(4096)
    assert budget == (limit - fixed) * per_matrix // (per_matrix + eigen.two_stage_extra_bytes(4096))
    assert budget // per_matrix * (per_matrix + eigen.two_stage_extra_bytes(4096)) + fixed <= limit
    assert [plan(n, m, "bfloat16")[0] // matrix_device_bytes(n, m, "bfloat16")
            for n, m in ((4096, 4096), (4096, 14336))] == [7, 5]
    monkeypatch.setattr(eigen, "CHASE_POOL_MAX_N", 2048)  # 4096 bands are not pooled: they take no room
    assert eigen.chase_pool_bytes(4096) == 0 and eigen.chase_pool_bytes(2048) > 0
    assert [gpu_batch_plan(limit, device=torch.device("cuda"))(n, m, "bfloat16")[0] // matrix_device_bytes(n, m, "bfloat16")
            for n, m in ((4096, 4096), (4096, 14336))] == [8, 5]
    monkeypatch.setattr(eigen, "CHASE_POOL_MATRICES", 0)
    assert [gpu_batch_plan(limit, device=torch.device("cuda"))(n, m, "bfloat16")[0] // matrix_device_bytes(n, m, "bfloat16")
            for n, m in ((4096, 4096), (4096, 14336))] == [8, 5]
    assert plan(256, 4096, "bfloat16")[1] == "auto"  # below TWO_STAGE_MIN_N: syevd
    assert plan(8192, 28672, "bfloat16")[1] == "two_stage"  # above GPU_STAGE2_MAX_N: as before
    assert gpu_batch_plan(limit, eigen_route="syevd")(4096, 14336, "bfloat16")[1] == "syevd"  # forced stays
    monkeypatch.setattr(eigen, "float32_to_gpu_route", lambda device: False)
    assert gpu_batch_plan(limit, precision="float32")(4096, 14336, "bfloat16")[1] == "auto"
    monkeypatch.setattr(eigen, "float32_to_gpu_route", lambda device: True)
    budget, route = gpu_batch_plan(limit, precision="float32")(4096, 14336, "bfloat16")
    assert route == "two_stage_gpu"  # planned with the float64 copy the route makes
    assert budget == (limit - eigen.chase_pool_bytes(4096)) * per_matrix // (per_matrix + eigen.two_stage_extra_bytes(4096, 4))
    monkeypatch.setattr(eigen, "gpu_stage2_available", lambda device: False)
    assert [gpu_batch_plan(limit)(n, m, "bfloat16")[0] // matrix_device_bytes(n, m, "bfloat16")
            for n, m in ((4096, 4096), (4096, 14336))] == [4, 3]


def _tasks(count, n, m):
    from spectrum_fast.sources import TensorInfo
    from spectrum_fast.targets import MatrixTask

    return [MatrixTask(name=f"model.layers.{i}.mlp.w", type="mlp.w", n=n, m=m, order=i,
                       tensor=TensorInfo(f"model.layers.{i}.mlp.w.weight", (n, m), "bfloat16", True), expert=None)
            for i in range(count)]


def test_max_gpu_memory_must_be_positive():
    with pytest.raises(spectrum_fast.SelectionError, match="max_gpu_memory"):
        spectrum_fast.scan({"model.layers.0.mlp.w.weight": torch.randn(8, 8)}, device="cpu", max_gpu_memory=0)


def test_plan_batches_in_model_order_keeps_every_matrix_once():
    """"model" order runs batches by their first matrix's position; same batches, same members."""
    from spectrum_fast.engine import plan_batches

    tasks = []
    for layer in range(5):  # per layer: a 64x64 and a 32x128 matrix, interleaved in model order
        for j, (n, m) in enumerate([(64, 64), (32, 128)]):
            t = _tasks(1, n, m)[0]
            tasks.append(type(t)(name=f"model.layers.{layer}.w{j}", type=f"w{j}", n=n, m=m,
                                 order=2 * layer + j, tensor=t.tensor, expert=None))
    by_shape = plan_batches(tasks, 2 * 64 * 64 * 10, max_batch=2)
    by_model = plan_batches(tasks, 2 * 64 * 64 * 10, max_batch=2, order="model")
    assert [b.tasks[0].order for b in by_shape] == [0, 4, 8, 1, 5, 9]
    assert [b.tasks[0].order for b in by_model] == [0, 1, 4, 5, 8, 9]
    assert sorted(t.order for b in by_model for t in b.tasks) == list(range(10))
    with pytest.raises(ValueError, match="batch order"):
        plan_batches(tasks, 1, order="random")


def test_syevd_side_stream_switch_halves_the_batch_budget_and_is_inert_on_cpu(monkeypatch):
    from spectrum_fast.engine import gpu_batch_plan

    limit = 3 << 29
    budget_off, _ = gpu_batch_plan(limit)(4096, 14336, "bfloat16")
    monkeypatch.setattr(eigen, "SYEVD_SIDE_STREAM", True)
    budget_on, _ = gpu_batch_plan(limit)(4096, 14336, "bfloat16")
    assert budget_on == budget_off // 2
    g = random_gram(3, 20, seed=21)
    torch.testing.assert_close(eigen.eigvalsh_deferred(g.clone(), "syevd").result(), torch.linalg.eigvalsh(g),
                               rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_syevd_on_a_side_stream_matches_the_plain_route(monkeypatch):
    """The side-stream syevd (asynchronous copy to pinned memory, event) gives exactly what the
    blocking route gives, also when the scan queues several batches behind it."""
    weights = {f"model.layers.{i}.mlp.w.weight": KINDS["spiked"](*SHAPES[i % len(SHAPES)], 500 + i) for i in range(12)}
    plain = spectrum_fast.scan(weights, device="cuda", progress=False, eigen_route="syevd", max_batch_bytes=300_000)
    monkeypatch.setattr(eigen, "SYEVD_SIDE_STREAM", True)
    g = random_gram(4, 300, seed=22, device="cuda")
    pending = eigen.eigvalsh_deferred(g.clone(), "syevd")
    torch.testing.assert_close(pending.result(), torch.linalg.eigvalsh(g).cpu(), rtol=0, atol=0)
    streamed = spectrum_fast.scan(weights, device="cuda", progress=False, eigen_route="syevd", max_batch_bytes=300_000)
    assert [r.snr for r in streamed.rows] == [r.snr for r in plain.rows]
    for row, w in zip(streamed.rows, weights.values()):
        check_row(row, w, ("side stream", row.name))


def test_gpu_stage_two_route_matches_syevd(device):
    """eigen_route "two_stage_gpu": stage 1, the Triton bulge chase and bisection (compiled on
    CUDA, interpreted on the CPU with small sizes), against syevd, in batches."""
    n, batch = (40, 3) if device == "cpu" else (1024, 4)
    g = random_gram(batch, n, 11, "spiked", device=device)
    truth = torch.linalg.eigvalsh(g).cpu()
    pending = eigen.eigvalsh_deferred(g.clone(), route="two_stage_gpu")
    got = pending.result()
    assert got.shape == (batch, n) and got.dtype == torch.float64 and got.device.type == "cpu"
    assert ((got - truth).abs().max() / truth.abs().max()).item() < 1e-12, f"[seed={SEED}]"


def test_gpu_stage_two_pools_bands_of_several_calls(device, monkeypatch):
    """ops.eigen.CHASE_POOL_MATRICES: bands wait until enough matrices of one size are pooled (or
    one of them is asked for), then one stage-2 solve takes them all; each call gets its own rows,
    equal to float64 truth, whatever the order results are asked in."""
    monkeypatch.setattr(eigen, "CHASE_POOL_MATRICES", 5)
    n = 24 if device == "cpu" else 600
    assert n <= eigen.CHASE_POOL_MAX_N
    grams = [random_gram(batch, n, 40 + i, "spiked", device=device) for i, batch in enumerate((2, 2, 1, 2, 1))]
    truths = [torch.linalg.eigvalsh(g).cpu() for g in grams]
    solves = []
    stage2 = eigen._stage2
    monkeypatch.setattr(eigen, "_stage2", lambda bands, width: solves.append(bands.shape[0]) or stage2(bands, width))
    pending = [eigen.eigvalsh_deferred(g.clone(), route="two_stage_gpu") for g in grams[:3]]
    assert solves == [5]  # 2 + 2 + 1 reached the pool's size
    later = [eigen.eigvalsh_deferred(g.clone(), route="two_stage_gpu") for g in grams[3:]]
    assert solves == [5] and not later[0].done() and not later[1].done()  # 3 waiting
    got = [p.result() for p in reversed(pending + later)][::-1]  # the last asked first
    assert solves == [5, 3] and not eigen._band_pools
    for values, truth in zip(got, truths):
        assert values.shape == truth.shape
        assert ((values - truth).abs().max() / truth.abs().max()).item() < 1e-12, f"[seed={SEED}]"
    monkeypatch.setattr(eigen, "CHASE_POOL_MAX_N", n - 1)  # bigger than the pool takes: solved on its own
    alone = eigen.eigvalsh_deferred(grams[0].clone(), route="two_stage_gpu")
    assert solves == [5, 3, 2] and not eigen._band_pools
    assert ((alone.result() - truths[0]).abs().max() / truths[0].abs().max()).item() < 1e-12, f"[seed={SEED}]"


def test_gpu_stage_two_route_takes_float32(device):
    """float32 Grams go through the same route, solved in float64, and come back as float64
    eigenvalues of the float32 matrix, to float64's accuracy; float16 is refused with the route's
    name."""
    n, batch = (40, 2) if device == "cpu" else (1024, 3)
    g = random_gram(batch, n, 12, "spiked", device=device).float()
    truth = torch.linalg.eigvalsh(g.double()).cpu()
    got = eigen.eigvalsh_deferred(g.clone(), route="two_stage_gpu").result()
    assert got.shape == (batch, n) and got.dtype == torch.float64
    assert ((got - truth).abs().max() / truth.abs().max()).item() < 1e-12, f"[seed={SEED}]"
    with pytest.raises(ValueError, match="two_stage_gpu route runs in float64 or float32 only"):
        eigen.eigvalsh_deferred(g.half(), route="two_stage_gpu")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scan_gpu_stage_two_route_matches_float64_svd(kind, device):
    shapes = [(24, 60), (40, 33), (17, 17)] if device == "cpu" else [(256, 1024), (1024, 1024), (1536, 640)]
    weights = {f"model.layers.{i}.mlp.p{n}x{m}.weight": KINDS[kind](n, m, 300 + i) for i, (n, m) in enumerate(shapes)}
    result = spectrum_fast.scan(weights, device=device, progress=False, eigen_route="two_stage_gpu")
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w, (kind, device, row.name))


def test_gpu_stage_two_route_without_its_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from spectrum_fast.kernels import bulge

    monkeypatch.setattr(bulge, "available", lambda device: False)
    with pytest.raises(ValueError, match="two_stage_gpu.*triton"):
        eigen.eigvalsh_deferred(random_gram(1, 8, 1), route="two_stage_gpu")


def test_chase_pools_start_after_the_last_batch_of_their_size(monkeypatch):
    """engine.START_LAST_POOL: a batch's pending eigenvalues are started (a waiting chase pool
    launched) right after the last batch of its Gram size is queued, and only then; off, never."""
    from spectrum_fast import engine, ops

    weights = {f"model.layers.{i}.{kind}.weight": torch.randn(n, m, dtype=torch.float64) + 0.1
               for i in range(3) for kind, n, m in (("mlp.up_proj", 8, 16), ("self_attn.k_proj", 4, 16),
                                                     ("mlp.down_proj", 16, 8))}
    batch_bytes = 2 * engine.matrix_device_bytes(16, 8, "float64")  # 2 up/down or 2-4 k per batch
    solve = ops.eigvalsh_deferred
    queued = []  # (Gram size, started right after queueing?) per batch, in the order run

    class Noted:
        def __init__(self, g, route):
            self.inner, self.index = solve(g, route), len(queued)
            queued.append([g.shape[-1], False])

        def start(self):
            assert self.index == len(queued) - 1, "started after a later batch was queued"
            queued[self.index][1] = True

        def done(self):
            return self.inner.done()

        def result(self):
            return self.inner.result()

    monkeypatch.setattr(ops, "eigvalsh_deferred", Noted)
    spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=batch_bytes)
    sizes = [k for k, _ in queued]
    assert sorted(set(sizes)) == [4, 8] and len(queued) >= 4
    last = {k: i for i, k in enumerate(sizes)}
    assert [started for _, started in queued] == [i == last[k] for i, k in enumerate(sizes)]
    queued.clear()
    monkeypatch.setattr(engine, "START_LAST_POOL", False)
    spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=batch_bytes)
    assert queued and not any(started for _, started in queued)


def test_pending_matrices_do_not_depend_on_host_cores(monkeypatch):
    """The scan keeps up to engine.MIN_IN_FLIGHT matrices waiting for their eigenvalues even with
    one host worker (the GPU chase's throughput is the number in flight), or as many as
    IN_FLIGHT_BAND_BYTES of their bands where that is more, and no more than that plus one batch;
    the rows are the same as when each batch is solved at once."""
    from spectrum_fast import engine, ops

    weights = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 16, dtype=torch.float64) + 0.1
               for i in range(200)}
    batch_bytes = 4 * engine.matrix_device_bytes(8, 16, "float64")  # batches of 4 matrices
    eager = spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=batch_bytes)

    monkeypatch.setenv("SPECTRUM_FAST_HOST_WORKERS", "1")
    solve = ops.eigvalsh_deferred
    pending, peak = [0], [0]

    class NeverDoneUntilAsked:  # what a slow device solve looks like to the engine
        def __init__(self, g, route):
            self.g, self.route, self.values = g.clone(), route, None
            pending[0] += g.shape[0]
            peak[0] = max(peak[0], pending[0])

        def done(self):
            return False

        def start(self):
            pass

        def result(self):
            if self.values is None:
                self.values = solve(self.g, self.route).result()
                pending[0] -= self.g.shape[0]
            return self.values

    monkeypatch.setattr(ops, "eigvalsh_deferred", NeverDoneUntilAsked)
    for band_room, expected in ((0, engine.MIN_IN_FLIGHT), (101 * eigen.band_bytes(8), 101)):
        monkeypatch.setattr(engine, "IN_FLIGHT_BAND_BYTES", band_room)
        peak[0] = 0
        lazy = spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=batch_bytes)
        assert expected <= peak[0] <= expected + 4, band_room
        assert pending[0] == 0
        assert [(r.name, r.snr, r.n_signal) for r in lazy.rows] == [(r.name, r.snr, r.n_signal) for r in eager.rows]
    # Where the GPU chase pools the bands (n <= CHASE_POOL_MAX_N), a whole pool and MIN_IN_FLIGHT
    # more may wait, so that finishing the oldest batch does not launch a pool before it is full.
    monkeypatch.setattr(engine, "IN_FLIGHT_BAND_BYTES", 0)
    cuda = torch.device("cuda")
    assert engine._default_in_flight(8, cuda) == eigen.CHASE_POOL_MATRICES + engine.MIN_IN_FLIGHT
    assert engine._default_in_flight(eigen.CHASE_POOL_MAX_N + 1, cuda) == engine.MIN_IN_FLIGHT
    assert engine._default_in_flight(8, torch.device("cpu")) == engine.MIN_IN_FLIGHT


@pytest.mark.parametrize("group", [2, 3, 4])
@pytest.mark.parametrize("n,width,kind", [(40, 8, "spiked"), (67, 16, "rank_deficient"), (130, 32, "spiked"),
                                          (100, 7, "spiked"), (33, 32, "spiked"), (5, 1, "zero")])
def test_stage1_with_grouped_updates_gives_the_same_band(n, width, kind, group, device, monkeypatch):
    """ops.band.STAGE1_PANELS_PER_UPDATE > 1: the same reflectors with the trailing updates
    grouped, so the same band to rounding (not for a rank-deficient Gram: past its rank the
    reflectors come from rounding noise, valid but different, 3e-13 of the largest entry apart
    over 40 seeds); exactly banded; the Gram's eigenvalues kept."""
    g = random_gram(3, n, n + width, kind, device=device)
    monkeypatch.setattr(band, "STAGE1_PANELS_PER_UPDATE", 1)
    ungrouped = band.reduce_to_band_(g.clone(), width)
    monkeypatch.setattr(band, "STAGE1_PANELS_PER_UPDATE", group)
    monkeypatch.setattr(band, "STAGE1_GROUPED_MIN_N", 1)
    grouped = band.reduce_to_band_(g.clone(), width)
    scale = g.abs().amax().item()
    if kind != "rank_deficient":
        assert (grouped - ungrouped).abs().max().item() <= 1e-13 * max(scale, 1e-300), f"seed={SEED}"
    outside = torch.ones(n, n, dtype=torch.bool, device=device).triu(width + 1)
    assert (grouped[:, outside] == 0).all() and (grouped[:, outside.mT] == 0).all()
    truth = torch.linalg.eigvalsh(g.cpu())
    got = torch.linalg.eigvalsh(grouped.cpu())
    assert ((got - truth).abs().max() / truth.abs().max().clamp_min(1e-300)).item() < 1e-13, f"seed={SEED}"


@pytest.mark.skipif(not spectrum_fast.kernels_available()["_C"], reason="spectrum_fast._C is not built")
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("n,width,kind", [(40, 8, "spiked"), (67, 16, "rank_deficient"), (130, 32, "spiked"),
                                          (33, 40, "spiked"), (5, 1, "zero"), (100, 7, "spiked")])
def test_stage1_loop_in_cpp_gives_the_same_band(n, width, kind, group, monkeypatch):
    """_C.reduce_to_band_ runs ops.band.reduce_to_band_'s operations in the same order, one
    trailing update per panel or per group of panels: on the CPU the bands are equal bit for bit."""
    g = random_gram(3, n, n + width, kind)
    monkeypatch.setattr(band, "STAGE1_PANELS_PER_UPDATE", group)
    monkeypatch.setattr(band, "STAGE1_GROUPED_MIN_N", 1)
    monkeypatch.setattr(band, "STAGE1_IN_CPP", False)
    python = band.reduce_to_band_(g.clone(), width)
    monkeypatch.setattr(band, "STAGE1_IN_CPP", True)
    calls = []
    from spectrum_fast import _extension

    ext = _extension.load()
    monkeypatch.setattr(ext, "reduce_to_band_", lambda *a, f=ext.reduce_to_band_: calls.append(a[5]) or f(*a))
    compiled = band.reduce_to_band_(g.clone(), width)
    assert calls == [group], "the C++ loop did not run, or not grouped as asked"
    assert torch.equal(compiled, python), f"seed={SEED}"


@pytest.mark.skipif(not spectrum_fast.kernels_available()["_C"], reason="spectrum_fast._C is not built")
def test_stage1_loop_in_cpp_refuses_bad_arguments_with_a_message():
    """The messages name the numbers (csrc/messages.h: formatting them crashed the device's build)."""
    from spectrum_fast import _extension

    ext = _extension.load()
    with pytest.raises(RuntimeError, match=r"expects \[B, n, n\], got \[2, 3, 4\]"):
        ext.reduce_to_band_(torch.ones(2, 3, 4, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match="bandwidth must be at least 1, got 0"):
        ext.reduce_to_band_(torch.ones(2, 4, 4, dtype=torch.float64), 0)
    with pytest.raises(RuntimeError, match="panels_per_update must be at least 1, got 0"):
        ext.reduce_to_band_(torch.ones(2, 4, 4, dtype=torch.float64), 2, 0, 128, -1, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("limit_mib", [256, 512])
def test_scan_peak_stays_within_max_gpu_memory(limit_mib):
    """The planner sizes batches so that the scan's own peak (inputs, Grams, the upcast chunk, the
    eigen route's temporaries) stays within max_gpu_memory, with batches planned for the GPU route
    where "auto" takes it (engine.gpu_batch_plan); the SNRs stay exact."""
    weights = {f"model.layers.{i}.mlp.w.weight": KINDS["spiked"](1024, 3000, 700 + i) for i in range(10)}
    result = spectrum_fast.scan(weights, device="cuda", progress=False, max_gpu_memory=limit_mib << 20)
    assert result.peak_gpu_bytes is not None and result.peak_gpu_bytes <= limit_mib << 20, (
        f"peak {result.peak_gpu_bytes / 2**20:.0f} MiB over {limit_mib} MiB")
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w, ("peak", limit_mib, row.name))
