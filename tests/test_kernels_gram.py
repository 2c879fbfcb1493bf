"""The Triton Gram kernel (spectrum_fast.kernels.gram) against a float64 Gram.

Without CUDA the kernel runs under triton's interpreter on CPU tensors, and TRITON_INTERPRET=1 must
be in the environment before triton is imported, and stay there. triton 3.6 reads it (knobs.runtime
.interpret, read from os.environ on each access) when @triton.jit decorates a function: our
kernels, when spectrum_fast.kernels.gram is imported, but also triton.language's own helpers
(tl.cdiv, ...), when triton is imported. It reads it again later: the first launch imports
triton.experimental.gluon, which asserts the flag is still on for those interpreted helpers. So it
is set at the top of this module (nothing imports triton earlier in this suite; torch does not at
import) and left set for the session; no other test uses triton.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
# triton imported before this line without the flag: its helpers are compiled-only (skip below)
_TRITON_IMPORTED_TOO_EARLY = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    import triton
    import triton.language as tl
    from spectrum_fast.kernels import gram as kgram
except ImportError as error:
    pytest.skip(f"triton is not importable: {error}", allow_module_level=True)

ops_gram_module = importlib.import_module("spectrum_fast.ops.gram")  # the module: ops.gram is the function

DEVICE = "cuda" if CUDA else "cpu"
if not kgram.available(DEVICE) or (not CUDA and _TRITON_IMPORTED_TOO_EARLY):
    pytest.skip(f"the Triton Gram kernel cannot run on {DEVICE} here (without CUDA: triton must be "
                "imported after TRITON_INTERPRET=1 is set, see the module docstring)", allow_module_level=True)


def _fix_interpreter_for_numpy_2_4() -> None:
    """triton 3.6's interpreter turns a scalar (a 1-element array) into a Python int with
    int(array), which numpy >= 2.4 refuses: every loop with a runtime bound fails
    (triton-lang/triton#9171, fixed upstream by squeezing first). Apply the same fix here; it only
    touches the interpreter, i.e. only these CPU tests."""
    import numpy as np
    import triton.runtime.interpreter as interpreter

    try:
        int(np.array([1]))
        return  # numpy < 2.4: nothing to fix
    except TypeError:
        pass
    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_then_fix_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_tensor_then_fix_index


if kgram._INTERPRETED:
    _fix_interpreter_for_numpy_2_4()

SEED = random.SystemRandom().randrange(2**31)  # fresh inputs every run; named in every message
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
UNIT_ROUNDOFF = 2.0**-24  # fp32


def make_input(batch, k, length, dtype, transposed, seed):
    """[B, k, L] nonzero Gaussian values at a random power-of-two scale; transposed=True gives the
    [B, k, L] view of a contiguous [B, L, k] tensor (what the caller passes for a tall W)."""
    g = torch.Generator().manual_seed(seed)
    scale = 2.0 ** torch.randint(-4, 5, (), generator=g).item()
    shape = (batch, length, k) if transposed else (batch, k, length)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    x = torch.where(x.abs() < 1e-3 * scale, torch.full_like(x, scale), x)  # never zero, even after rounding
    x = x.to(dtype).to(DEVICE)
    return x.mT if transposed else x


def error_ratio(g: torch.Tensor, a: torch.Tensor) -> float:
    """max |G - A A^T| / bound, exact reference in float64.

    Any fp32 summation of L terms, in any order, errs by at most gamma_L * sum_l |a_il||a_jl|
    (gamma_n = n u / (1 - n u), u = 2^-24). bf16/fp16 products are exact in fp32; fp32 products
    round once more (L + 1 terms). Tensor cores may truncate rather than round inside the
    accumulation: allow 2 u per step. So the bound is 2 (L + 1) u sum |a||a|: <= 1 always for a
    correct kernel, while a missing term, a bf16-rounded output or TF32 products break it.
    """
    a64 = a.double()
    exact = a64 @ a64.mT
    magnitude = a64.abs() @ a64.abs().mT
    n = a.shape[-1] + 1
    bound = 2 * n * UNIT_ROUNDOFF / (1 - 2 * n * UNIT_ROUNDOFF) * magnitude
    return ((g.double() - exact).abs() / bound).max().item()


def check_gram(g, a, context):
    assert g.dtype == torch.float32 and g.shape == (*a.shape[:-1], a.shape[-2]), (context, g.shape)
    assert not torch.isnan(g).any(), f"{context}: NaN left: an output tile was never written"
    assert torch.equal(g, g.mT), f"{context}: G != G^T bitwise"
    ratio = error_ratio(g, a)
    assert ratio <= 1.0, f"{context}: error {ratio:.3g} x the fp32 accumulation bound"


# Which launch each small case uses. Interpreter: the public entry (its one small config). GPU:
# each H100 config launched directly, since the autotuner may pick any of them; one config per
# case, rotating, so every config meets every dtype and both layouts while the number of
# compilations (one per config and specialization: dtype, strides equal to 1, divisibility by
# 16) stays small.
def config_for(case: int) -> dict | None:
    if kgram._INTERPRETED:
        return None  # None: gram_fp32_triton
    c = kgram._H100_CONFIGS[case % len(kgram._H100_CONFIGS)]
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def run_kernel(a: torch.Tensor, config: dict | None) -> torch.Tensor:
    if config is None:
        return kgram.gram_fp32_triton(a)
    out = torch.full((a.shape[0], a.shape[1], a.shape[1]), float("nan"), dtype=torch.float32, device=a.device)
    kgram._launch(a, out, kgram._gram_lower_tiles_kernel, **dict(config))
    return out


EDGE_K = [1, 17, 64, 100]
EDGE_L = [1, 33, 257]
EDGE_CASES = [(k, length, dtype) for dtype in DTYPES for k in EDGE_K for length in EDGE_L]


@pytest.mark.parametrize("case", range(len(EDGE_CASES)),
                         ids=[f"k{k}-L{n}-{str(d)[6:]}" for k, n, d in EDGE_CASES])
def test_gram_matches_float64(case):
    k, length, dtype = EDGE_CASES[case]
    batch = 1 + (case // 2) % 5  # B = 1..5 across the cases
    transposed = (case // len(EDGE_L)) % 2 == 1  # each (dtype, k) row of cases takes one layout;
    # alternating with k, every dtype meets both layouts and every k meets both in some dtype
    a = make_input(batch, k, length, dtype, transposed, SEED + case)
    config = config_for(case)
    g = run_kernel(a, config)
    check_gram(g, a, f"seed={SEED + case} B={batch} k={k} L={length} {dtype} transposed={transposed} {config}")


def test_layouts_and_tile_multiples():
    """Both layouts of one input give the same bits; L a multiple of the tile (unmasked loop)."""
    for index, dtype in enumerate(DTYPES):
        a = make_input(3, 48, 128, dtype, False, SEED + 1000)
        a_t = a.mT.contiguous().mT  # same values, transposed storage
        assert a_t.stride()[-1] != 1
        config = config_for(index)
        g, g_t = run_kernel(a, config), run_kernel(a_t, config)
        context = f"seed={SEED + 1000} {dtype} {config}"
        check_gram(g, a, context)
        check_gram(g_t, a_t, context)


@pytest.mark.parametrize("index", range(len(kgram._H100_CONFIGS)))
def test_every_h100_config(index):
    """Each GPU config (tile sizes, band height) on a shape that spans several of its tiles; under
    the interpreter too, where the public entry only ever uses the small config."""
    c = kgram._H100_CONFIGS[index]
    config = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    for dtype, transposed in [(torch.bfloat16, True), (torch.float32, False)]:
        seed = SEED + 5000 + index
        a = make_input(1, c.kwargs["BLOCK"] + 3, 100, dtype, transposed, seed)  # 2 tile rows, 3 tiles
        check_gram(run_kernel(a, config), a, f"seed={seed} {dtype} transposed={transposed} {config}")


def test_bound_catches_wrong_grams():
    """The check must fail for the mistakes it is there for, at the test shapes' sizes."""
    for dtype in DTYPES:
        for length in EDGE_L:
            seed = SEED + 2000 + length
            a = make_input(2, 17, length, dtype, False, seed).cpu()
            a64 = a.double()
            context = f"seed={seed} {dtype} L={length}"
            right = (a64 @ a64.mT).float()
            assert error_ratio(right, a) <= 1.0, context
            last_term_dropped = right - (a64[..., -1:] @ a64[..., -1:].mT).float()  # a missed L tail
            assert error_ratio(last_term_dropped, a) > 1.0, context
            bf16_output = right.to(torch.bfloat16).float()  # DESIGN.md trap: a bf16-output GEMM
            assert error_ratio(bf16_output, a) > 1.0, context
            if dtype == torch.float32 and length > 1:  # TF32 trap: products of 10-bit mantissas
                tf32 = (a64.float().view(torch.int32) & ~0x1FFF).view(torch.float32).double()
                assert error_ratio((tf32 @ tf32.mT).float(), a) > 1.0, context


def test_tile_order_covers_the_lower_triangle_once():
    """_lower_tile maps programs 0..T(T+1)/2-1 one-to-one onto tiles (i >= j), for many T and GROUP."""

    @triton.jit
    def lower_tile_table(out_ptr, count, num_tile_rows, GROUP: tl.constexpr,
                         SIZE: tl.constexpr):
        t = tl.minimum(tl.arange(0, SIZE), count - 1)  # lanes past count repeat the last tile
        i, j = kgram._lower_tile(t, num_tile_rows, GROUP)
        tl.store(out_ptr + 2 * t, i, mask=t < count)
        tl.store(out_ptr + 2 * t + 1, j, mask=t < count)

    for rows in [1, 2, 3, 5, 8, 9, 17, 64, 100]:
        count = rows * (rows + 1) // 2
        for group in [1, 2, 3, 8]:
            out = torch.full((count, 2), -1, dtype=torch.int32, device=DEVICE)
            lower_tile_table[(1,)](out, count, rows, GROUP=group, SIZE=triton.next_power_of_2(count))
            got = sorted(map(tuple, out.tolist()))
            want = [(i, j) for i in range(rows) for j in range(i + 1)]
            assert got == want, f"T={rows} GROUP={group}: {set(want) ^ set(got)}"


# Compiled for sm_90 in a subprocess without TRITON_INTERPRET (no GPU needed: triton ships ptxas):
# the interpreter ignores input_precision, so only the compiled code can show the fp32 dot is not
# TF32. What triton specializes at launch is mimicked: unit stride constant, 16-byte alignment.
_COMPILE_FOR_SM90 = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from spectrum_fast.kernels import gram as kg

out = {}
for dtype in ["bf16", "fp32"]:
    for layout in ["contiguous", "transposed"]:
        c = kg._H100_CONFIGS[0]
        sig = {"a_ptr": "*" + dtype, "g_ptr": "*fp32", "k": "i32", "L": "i32", "stride_ab": "i32",
               "stride_ak": "i32", "stride_al": "i32", "stride_gb": "i32", "stride_gk": "i32"}
        unit = "stride_al" if layout == "contiguous" else "stride_ak"
        sig[unit] = "constexpr"
        constexprs = dict(c.kwargs, EVEN_K=True, EVEN_L=True, BF16_AS_FP32=False, **{unit: 1})
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if sig[name] != "constexpr"}
        src = ASTSource(kg._gram_lower_tiles_kernel, sig, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": c.num_warps, "num_stages": c.num_stages})
        ptx = kernel.asm["ptx"]
        out[dtype + "/" + layout] = {"wgmma": "wgmma" in ptx, "tf32": "tf32" in ptx,
                                     "fma_f32": "fma.rn.f32" in ptx, "shared": kernel.metadata.shared,
                                     "cp_async_16B": ptx.count("cp.async.cg.shared.global")}
print(json.dumps(out))
"""


def test_compiles_for_h100_without_tf32():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env,
                         timeout=300)
    if run.returncode and "ptxas" in run.stderr:
        pytest.skip(f"triton cannot compile for sm_90 here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for name, info in got.items():
        assert not info["tf32"], f"{name}: TF32 in the PTX"
        assert info["cp_async_16B"] > 0, f"{name}: loads are not pipelined 16-byte copies: {info}"
        if name.startswith("bf16"):
            assert info["wgmma"], f"{name}: no wgmma (tensor cores) for bf16: {info}"
        else:
            assert info["fma_f32"] and not info["wgmma"], f"{name}: fp32 must be plain fp32 FMAs: {info}"


def test_public_entry_shapes_and_errors():
    a = make_input(1, 5, 9, torch.bfloat16, False, SEED + 3000)
    g2 = kgram.gram_fp32_triton(a[0])  # [k, L] -> [k, k]
    assert g2.shape == (5, 5)
    check_gram(g2.unsqueeze(0), a, f"seed={SEED + 3000} 2-D input")
    empty_l = kgram.gram_fp32_triton(a[..., :0])
    assert torch.equal(empty_l, torch.zeros(1, 5, 5, device=DEVICE))
    assert kgram.gram_fp32_triton(a[:0]).shape == (0, 5, 5)
    with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
        kgram.gram_fp32_triton(a.double())
    with pytest.raises(ValueError, match=r"\[B, k, L\]"):
        kgram.gram_fp32_triton(a[0, 0])
    assert not kgram.available("meta")


def test_ops_gram_keeps_torch_mm_until_a_scan_gains():
    """The Triton route is off: the kernel alone wins on the H100, but a whole scan with it on lost
    to its autotuning (see ops/gram.py); on the CPU it never runs (the interpreter is for tests)."""
    assert all(v is None for v in ops_gram_module._TRITON_GRAM_MIN_K.values())
    w = torch.randn(1600, 1700).to(torch.bfloat16)
    assert not ops_gram_module._use_triton_gram(w)


# -- GPU: the autotuned kernel on model-sized shapes ------------------------------------------------
GPU = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("k,length", [(1024, 4096), (1024, 14336), (4096, 4096), (4096, 14336)])
def test_gram_on_gpu_model_shapes(k, length, dtype):
    batch = 3 if k == 1024 else 1
    transposed = length == 14336  # a tall W (e.g. gate_proj 14336 x 4096) is passed as W^T
    seed = SEED + k + length
    a = make_input(batch, k, length, dtype, transposed, seed)
    g = kgram.gram_fp32_triton(a)
    check_gram(g, a, f"seed={seed} B={batch} k={k} L={length} {dtype} transposed={transposed}")


@GPU
@pytest.mark.gpu
def test_ops_gram_routes_to_triton_when_enabled(monkeypatch):
    for dtype in DTYPES:
        monkeypatch.setitem(ops_gram_module._TRITON_GRAM_MIN_K, dtype, 64)
    w = make_input(4, 300, 96, torch.bfloat16, False, SEED + 4000)  # [B, 300, 96]: Gram of the 96 side
    assert ops_gram_module._use_triton_gram(w.mT)
    g = ops_gram_module.gram(w, "float32")
    assert torch.equal(g, kgram.gram_fp32_triton(w.mT))
    check_gram(g, w.mT, f"seed={SEED + 4000} via ops.gram")
    assert not ops_gram_module._use_triton_gram(w[..., :32].mT)  # k = 32 < 64: torch.mm
