"""The exact engine against a float64 SVD: spiked, rectangular, rank-deficient, heavy-tailed, noise."""

from __future__ import annotations

import importlib
import math
import random

import pytest
import torch

import spectrum_fast
from spectrum_fast.ops import eigvalsh, gram
from spectrum_fast.ops.stats import snr_statistics_torch
from spectrum_fast import _extension

from float64_reference import reference_stats

SEED = random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + seed)


def spiked(n, m, seed, spikes_scale=8.0, rank_frac=1 / 16, noise=1.0, dtype=torch.bfloat16):
    """Trained-looking weight: Gaussian bulk / sqrt(m) + heavy-tailed low-rank spikes s_i ~ c i^-0.7."""
    g = gen(seed)
    k = min(n, m)
    w = noise * torch.randn(n, m, generator=g, dtype=torch.float64) / math.sqrt(m)
    r = max(1, int(k * rank_frac))
    u = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
    s = spikes_scale * torch.arange(1, r + 1, dtype=torch.float64) ** -0.7
    return (w + (u * s) @ v.T).to(dtype)


def rank_deficient(n, m, seed, dtype=torch.bfloat16):
    """A third of the rows repeat earlier rows exactly: rank = 2/3 of min(n, m) (+ a noise bulk)."""
    w = spiked(n, m, seed, dtype=dtype)
    dup = n // 3
    w[n - dup :] = w[:dup]
    return w


def heavy_tailed(n, m, seed, dtype=torch.bfloat16):
    g = gen(seed)
    # Student-t entries (3 degrees of freedom): a power-law spectrum like trained attention weights.
    t = torch.distributions.StudentT(3.0).sample((n, m)).to(torch.float64)
    t = t * (0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64))
    return (t / math.sqrt(m)).to(dtype)


def pure_noise(n, m, seed, dtype=torch.bfloat16):
    return (torch.randn(n, m, generator=gen(seed), dtype=torch.float64) / math.sqrt(m)).to(dtype)


SHAPES = [(96, 96), (64, 512), (512, 64), (200, 300), (48, 384), (130, 70)]
KINDS = {
    "spiked": spiked,
    "spiked_x400": lambda n, m, s, dtype=torch.bfloat16: spiked(n, m, s, spikes_scale=400.0, dtype=dtype),
    "rank_deficient": rank_deficient,
    "heavy_tailed": heavy_tailed,
    "pure_noise": pure_noise,
}


def check_row(row, w, context):
    ref = reference_stats(w)
    assert row.status == "ok", context
    assert (row.n_signal, row.n_noise) == (ref["n_signal"], ref["n_noise"]), (context, SEED)
    assert abs(row.snr - ref["snr"]) <= 1e-5 * abs(ref["snr"]), (context, SEED, row.snr, ref["snr"])
    assert math.isclose(row.sigma_max, ref["sigma_max"], rel_tol=1e-9), (context, SEED)
    assert math.isclose(row.threshold, ref["threshold"], rel_tol=1e-6, abs_tol=1e-12), (context, SEED)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scan_matches_float64_svd(kind, dtype):
    weights = {}
    for i, (n, m) in enumerate(SHAPES):
        weights[f"model.layers.{i}.mlp.proj_{n}x{m}.weight"] = KINDS[kind](n, m, 100 * i, dtype=dtype)
    result = spectrum_fast.scan(weights, device="cpu", progress=False)
    assert [r.name for r in result.rows] == [k[: -len(".weight")] for k in weights]
    for row, (name, w) in zip(result.rows, weights.items()):
        check_row(row, w, (kind, str(dtype), name))


def test_same_shape_batches_and_budget():
    """Many same-shape matrices in batches of any size give the same numbers as one at a time."""
    weights = {f"model.layers.{i}.mlp.experts.{e}.down_proj.weight": spiked(40, 72, 10 * i + e)
               for i in range(3) for e in range(7)}
    big = spectrum_fast.scan(weights, device="cpu", progress=False)
    tiny = spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=1)
    for a, b, w in zip(big.rows, tiny.rows, weights.values()):
        assert a.name == b.name
        assert a.snr == pytest.approx(b.snr, rel=1e-12)
        check_row(a, w, a.name)
    assert big.rows[0].type == "mlp.experts.0.down_proj"
    pooled = spectrum_fast.scan(weights, device="cpu", progress=False, pool_experts=True)
    assert {r.type for r in pooled.rows} == {"mlp.experts.*.down_proj"}


def test_pipeline_order_runs_the_batch_of_smallest_gram_last(monkeypatch):
    """engine.pipeline_order: of the batches, the one of smallest Gram (then fewest elements) runs
    last, the one of fewest elements of the rest first, the rest as planned; the scan's rows are
    those of the planned order, in model order."""
    from spectrum_fast import engine

    def batch(n, m, count, tag):
        return engine.Batch(n, m, [tag] * count, "auto")

    planned = [batch(64, 224, 7, "a"), batch(16, 64, 64, "kv"), batch(224, 64, 1, "one"), batch(16, 64, 8, "kv8"),
               batch(64, 64, 11, "q")]
    assert [b.tasks[0] for b in engine.pipeline_order(planned)] == ["one", "a", "kv", "q", "kv8"]
    monkeypatch.setattr(engine, "FEWEST_FIRST", False)
    assert [b.tasks[0] for b in engine.pipeline_order(planned)] == ["a", "kv", "one", "q", "kv8"]
    monkeypatch.setattr(engine, "FEWEST_FIRST", True)
    assert engine.pipeline_order(planned[:1]) == planned[:1] and engine.pipeline_order([]) == []
    same = [batch(8, 8, 2, "x"), batch(8, 8, 2, "y"), batch(8, 8, 2, "z")]  # equals: the latest stays last
    assert [b.tasks[0] for b in engine.pipeline_order(same)] == ["x", "y", "z"]

    weights = {f"model.layers.{i}.{kind}.weight": spiked(n, m, 10 * i + j)
               for i in range(2) for j, (kind, n, m) in enumerate(
                   [("self_attn.k_proj", 16, 400), ("mlp.up_proj", 40, 72), ("mlp.down_proj", 72, 40)])}
    seen = []
    run = engine.run_batches

    def noted(src, batches, *a, **k):
        for task, row in run(src, batches, *a, **k):
            seen.append(task.name)
            yield task, row

    scan_module = importlib.import_module("spectrum_fast.scan")  # the module: the package's ``scan`` is the function
    monkeypatch.setattr(scan_module, "run_batches", noted)
    budget = 2 * engine.matrix_device_bytes(72, 40, "bfloat16")  # batches of 2 matrices of each shape
    ordered_rows = spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=budget).rows
    # planned k_proj, then up_proj with its transpose down_proj (engine.MERGE_TRANSPOSES), layer by
    # layer; k_proj's Grams are the smallest
    assert seen == [f"model.layers.{i}.{kind}" for i in range(2) for kind in ("mlp.up_proj", "mlp.down_proj")] \
        + ["model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj"]
    monkeypatch.setattr(engine, "PIPELINE_ORDER", False)
    seen.clear()
    planned_rows = spectrum_fast.scan(weights, device="cpu", progress=False, max_batch_bytes=budget).rows
    assert seen[:2] == ["model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj"]
    assert [r.name for r in ordered_rows] == [r.name for r in planned_rows] == [k[: -len(".weight")] for k in weights]
    assert [r.snr for r in ordered_rows] == [r.snr for r in planned_rows]


def test_transposed_shapes_share_a_batch_with_their_own_rows_and_matrices(monkeypatch):
    """engine.MERGE_TRANSPOSES: n x m and m x n matrices (an MLP's up and down projections) are
    planned into one batch, short side first; each row matches a float64 SVD and the rows of a
    scan that batches them apart, and on_matrices hands each matrix over in its own shape."""
    from spectrum_fast import engine

    shapes = [("mlp.up_proj", 40, 72), ("mlp.down_proj", 72, 40), ("mlp.gate_proj", 40, 72)]
    weights = {f"model.layers.{i}.{kind}.weight": spiked(n, m, 10 * i + j)
               for i in range(3) for j, (kind, n, m) in enumerate(shapes)}
    handed = {}

    def keep(tasks, matrices):
        assert len(tasks) == len(matrices)
        for task, w in zip(tasks, matrices):
            handed[task.name] = w.clone()

    merged = spectrum_fast.scan(weights, device="cpu", progress=False, cache=False, on_matrices=keep)
    for row, (name, w) in zip(merged.rows, weights.items()):
        check_row(row, w, name)
        assert row.shape == tuple(w.shape)
        assert torch.equal(handed[row.name], w), row.name
    monkeypatch.setattr(engine, "MERGE_TRANSPOSES", False)
    apart = spectrum_fast.scan(weights, device="cpu", progress=False, cache=False)
    for a, b in zip(merged.rows, apart.rows):
        assert (a.name, a.n_signal) == (b.name, b.n_signal)
        assert a.snr == pytest.approx(b.snr, rel=1e-12), (a.name, SEED)


def test_plan_batches_puts_transposes_together_short_side_first(monkeypatch):
    from spectrum_fast import engine
    from spectrum_fast.targets import MatrixTask

    def task(order, n, m):
        return MatrixTask(name=f"w{order}", type="t", tensor=_Info("bfloat16"), expert=None, n=n, m=m, order=order)

    tasks = [task(0, 8, 24), task(1, 24, 8), task(2, 8, 8), task(3, 24, 8), task(4, 8, 24), task(5, 8, 24)]
    per_matrix = engine.matrix_device_bytes(8, 24, "bfloat16")
    batches = engine.plan_batches(tasks, 2 * per_matrix)
    assert [[t.order for t in b.tasks] for b in batches] == [[0, 1], [3, 4], [5], [2]]
    assert [(b.n, b.m) for b in batches] == [(8, 24), (8, 24), (8, 24), (8, 8)]
    assert [[b.transposed(t) for t in b.tasks] for b in batches] == [[False, True], [True, False], [False], [False]]
    monkeypatch.setattr(engine, "MERGE_TRANSPOSES", False)
    apart = engine.plan_batches(tasks, 2 * per_matrix)
    assert [[t.order for t in b.tasks] for b in apart] == [[0, 4], [5], [1, 3], [2]]


class _Info:
    def __init__(self, dtype):
        self.dtype = dtype


def test_fused_expert_tensor_is_split_per_expert():
    experts = torch.stack([spiked(48, 80, e) for e in range(5)])  # [E, n, m]
    result = spectrum_fast.scan({"model.layers.0.mlp.experts.down_proj": experts}, device="cpu", progress=False)
    assert [r.name for r in result.rows] == [f"model.layers.0.mlp.experts.down_proj.{e}" for e in range(5)]
    for e, row in enumerate(result.rows):
        check_row(row, experts[e], row.name)


def test_one_dimensional_weight_is_a_row_matrix():
    w = torch.randn(77, generator=gen(1)).to(torch.bfloat16) + 1
    result = spectrum_fast.scan({"model.norm.weight": w}, types="all", device="cpu", progress=False)
    (row,) = result.rows
    assert row.shape == (1, 77)
    check_row(row, w, "norm")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9, 64, 101])
def test_statistics_backends_agree_with_torch_quantile(k):
    """torch and csrc statistics vs torch.quantile on the same singular values, every k mod 4."""
    s = torch.rand(6, k, generator=gen(k), dtype=torch.float64).sort(dim=-1).values * 3
    s[0] = 0.0  # a zero matrix row
    eig = s**2
    n, m = k, 4 * k
    table = snr_statistics_torch(eig, n, m)
    for b in range(s.shape[0]):
        q25, q75 = torch.quantile(s[b], 0.25), torch.quantile(s[b], 0.75)
        assert table[b, 1].item() == pytest.approx(((q75 - q25) / 1.349).item(), rel=1e-15, abs=1e-300)
    ext = _extension.load()
    if ext is None:
        pytest.skip("spectrum_fast._C is not built (pip install --no-build-isolation -e .)")
    torch.testing.assert_close(ext.snr_statistics(eig, n, m), table, rtol=1e-13, atol=0)


def test_statistics_csrc_rejects_bad_input():
    ext = _extension.load()
    if ext is None:
        pytest.skip("spectrum_fast._C is not built")
    with pytest.raises(RuntimeError, match="float64"):
        ext.snr_statistics(torch.ones(2, 3, dtype=torch.float32), 3, 4)
    with pytest.raises(RuntimeError, match=r"\[B, k\]"):
        ext.snr_statistics(torch.ones(3, dtype=torch.float64), 3, 4)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_gram_is_never_rounded_to_input_precision(precision):
    w = spiked(64, 256, 7)
    g = gram(w, precision)
    assert g.dtype == (torch.float64 if precision == "float64" else torch.float32)
    truth = w.double() @ w.double().T
    err = (g.double() - truth).abs().max() / truth.abs().max()
    assert err < (1e-15 if precision == "float64" else 1e-6), err


def test_gram_chunks_along_the_long_side(monkeypatch):
    import importlib

    gram_mod = importlib.import_module("spectrum_fast.ops.gram")  # the module, not the function

    w = spiked(300, 40, 9)  # tall: Gram of the 40 side
    monkeypatch.setattr(gram_mod, "_CHUNK_BYTES", 8 * 40 * 7)  # chunks of 7 rows
    g = gram(w)
    torch.testing.assert_close(g, w.double().T @ w.double(), rtol=1e-14, atol=1e-14)
    assert eigvalsh(g).shape == (40,)


@pytest.mark.parametrize("triangle", [False, True])
@pytest.mark.parametrize("k", [1, 2, 25])
@pytest.mark.parametrize("chunk_matrices", [0.5, 1, 2, 3, 10])
def test_gram_of_a_batch_in_chunks_of_whole_or_partial_matrices(chunk_matrices, k, triangle, monkeypatch):
    """Batches go in chunks of whole matrices where one fits (a partial last group too), else one
    matrix at a time in slices along the long side; by one product or the 2 x 2 block triangle
    (odd k too), mirrored exactly; every matrix's Gram is its own, to float64."""
    import importlib

    gram_mod = importlib.import_module("spectrum_fast.ops.gram")
    monkeypatch.setitem(gram_mod.BLOCK_TRIANGLE, "cpu", triangle)
    w = torch.stack([spiked(k, 70, 30 + i) if k > 2 else torch.randn(k, 70).to(torch.bfloat16) + 0.5
                     for i in range(7)])  # Grams of the k side
    monkeypatch.setattr(gram_mod, "_CHUNK_BYTES", int(8 * k * 70 * chunk_matrices))
    g = gram(w)
    truth = w.double() @ w.double().mT
    torch.testing.assert_close(g, truth, rtol=1e-14, atol=1e-14)
    assert torch.equal(g, g.mT) or not triangle
    torch.testing.assert_close(gram(w.mT), truth, rtol=1e-14, atol=1e-14)  # the short side is found
    torch.testing.assert_close(gram(w[3]), truth[3], rtol=1e-14, atol=1e-14)  # one matrix, no batch


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scan_on_gpu_matches_float64_svd(kind):
    weights = {f"model.layers.{i}.mlp.p.weight": KINDS[kind](n, m, 100 * i) for i, (n, m) in enumerate(SHAPES)}
    weights["model.layers.9.mlp.big.weight"] = KINDS[kind](1024, 4096, 999)
    result = spectrum_fast.scan(weights, device="cuda", progress=False)
    assert result.peak_gpu_bytes is not None and result.peak_gpu_bytes > 0
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w, (kind, row.name))


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["host_pinned_staging", "host_direct", "on_gpu"])
def test_gpu_scan_loading_paths_match_float64_svd(placement, monkeypatch):
    """Every way a batch reaches the GPU (pinned host staging, reader writing straight to the GPU,
    tensors already on the GPU), over many small batches so the reader runs ahead of the solves;
    every other matrix is transposed, so batches mix both shapes (engine.MERGE_TRANSPOSES)."""
    from spectrum_fast import engine

    monkeypatch.setattr(engine, "PINNED_STAGING", placement == "host_pinned_staging")
    weights = {f"model.layers.{i}.mlp.p.weight": spiked(*((96 + 8 * (i % 3), 200)[:: 1 - 2 * (i % 2)]), 7000 + i)
               for i in range(12)}
    source = {k: v.cuda() for k, v in weights.items()} if placement == "on_gpu" else weights
    result = spectrum_fast.scan(source, device="cuda", progress=False, max_batch_bytes=200_000)
    assert len(result.rows) == len(weights)
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w, (placement, row.name))


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("copy_stream", [True, False])
@pytest.mark.parametrize("cached", [False, True])
def test_gpu_scan_of_files_read_direct_or_cached_matches_float64_svd(cached, copy_stream, tmp_path, monkeypatch):
    """Files read into per-matrix pinned views (direct reads where uncached, file_reader) and
    copied to the GPU one view at a time, on a copy stream one batch ahead or on the compute
    stream, over many small batches read ahead of the solves; pairs of matrices of transposed
    shapes share batches (engine.MERGE_TRANSPOSES: the second lands and is transposed on the GPU)."""
    from safetensors.torch import save_file

    from spectrum_fast import engine, file_reader

    monkeypatch.setattr(engine, "COPY_STREAM", copy_stream)
    monkeypatch.setattr(file_reader.FileReader, "_cached_share", lambda self, a, b: float(cached))
    monkeypatch.setattr(file_reader, "MIN_DIRECT_BYTES", 4096)
    shapes = [(96 + 8 * (i // 2 % 3), 200 + i - i % 2) for i in range(12)]
    weights = {f"model.layers.{i}.mlp.p.weight": spiked(*(shape[::-1] if i % 2 else shape), 7100 + i)
               for i, shape in enumerate(shapes)}
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    result = spectrum_fast.scan(tmp_path, device="cuda", progress=False, max_batch_bytes=200_000)
    assert len(result.rows) == len(weights)
    for row, w in zip(result.rows, weights.values()):
        check_row(row, w.to(torch.bfloat16), (cached, row.name))


@GPU
@pytest.mark.gpu
def test_gpu_scan_stopped_by_a_read_error_ends_cleanly_and_unpins(tmp_path):
    """A read failing mid-scan, with the reader ahead and staging buffers in flight, must raise
    the source's error (no hang on the staging ring) and leave no buffer registered."""
    from spectrum_fast import staging
    from spectrum_fast.errors import SourceError
    from spectrum_fast.sources import DictSource

    weights = {f"model.layers.{i}.mlp.p.weight": spiked(96, 200, 7300 + i) for i in range(12)}

    class FailingSource(DictSource):
        read_piece_bytes = 1 << 12  # pieces on the IO threads, as files are read

        def read_into(self, info, out, first=0):
            if info.name == "model.layers.7.mlp.p.weight":
                raise SourceError("model.layers.7: cannot read (test)")
            super().read_into(info, out, first)

    made = []
    real_init = staging.PinnedRing.__init__

    def tracking_init(self, *a, **k):
        real_init(self, *a, **k)
        made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(staging.PinnedRing, "__init__", tracking_init)
        with pytest.raises(SourceError, match="layers.7"):
            spectrum_fast.scan(FailingSource(weights), device="cuda", progress=False, max_batch_bytes=60_000)
    for thread in staging.unpin_threads():  # free() may run on a thread (staging.UNPIN_IN_BACKGROUND)
        thread.join()
    assert made and all(not ring._made and not ring._pinned for ring in made)  # free() ran: nothing left pinned
    result = spectrum_fast.scan(weights, device="cuda", progress=False, max_batch_bytes=60_000)
    assert len(result.rows) == len(weights)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_finite_and_nonzero_check(dtype):
    """The per-matrix finiteness / nonzero check: a NaN, an inf (either sign) or a lone nonzero
    anywhere in a row, first entry or last, must be seen; a NaN beside an inf too."""
    from spectrum_fast import engine

    flat = torch.zeros(7, 30, dtype=dtype)
    flat[0] = torch.randn(30).to(dtype) + 3  # ok
    flat[1, 29] = float("nan")
    flat[2, 0] = float("-inf")
    flat[3, 29] = 0.5  # one nonzero, the last entry
    flat[5, 3], flat[5, 4] = float("inf"), float("nan")
    flat[6, 0] = float("nan")  # a NaN in an otherwise zero row
    finite, nonzero = engine._finite_and_nonzero(flat)  # row 4: all zero
    assert finite.tolist() == [True, False, False, True, True, False, False]
    assert nonzero[[0, 3]].all() and not nonzero[4]


def test_peak_host_counts_pinned_buffers_on_gpu_scans(monkeypatch):
    """Pinned staging buffers live outside RSS; a GPU scan's host peak must include them (checked
    with a stand-in for the pinned allocator's statistics: no GPU needed)."""
    from spectrum_fast import memory

    monkeypatch.setattr(memory, "host_anon_bytes", lambda: 100)
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {"allocated_bytes.current": 7000})
    assert memory.pinned_host_bytes() == 7000
    tracker = memory.PeakTracker(torch.device("cpu"))
    tracker.sample()
    assert tracker.host_peak == 100  # a CPU scan has no pinned buffers to count
    tracker.device = torch.device("cuda")  # as a GPU scan's tracker samples
    tracker.sample()
    assert tracker.host_peak == 7100
