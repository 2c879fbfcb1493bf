// Stage 1 of the exact eigen route (dense -> band) with its loop in C++: the same ATen operations,
// in the same order, as spectrum_fast/ops/band.py's reduce_to_band_ (the tests compare the two),
// without Python's cost per operation (about 15 per panel, n / b panels per matrix: at n = 1024
// that cost is a fifth of the stage on the H100's first measurements, csrc/NOTES.md). Runs on the
// tensor's device, on the current stream; panels go to the compiled panel QR
// (householder_panels.cu) where the build has it and the caller's rule allows.
#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

#include "messages.h"
#include "spectrum_fast.h"

namespace {

std::tuple<at::Tensor, at::Tensor> panel_geqrf(const at::Tensor& panel, bool use_kernel, int64_t blocks_per_panel) {
#ifdef SPECTRUM_FAST_WITH_CUDA
  if (use_kernel) {
    at::Tensor qr = panel.clone(at::MemoryFormat::Contiguous);
    at::Tensor tau = householder_panels_(qr, blocks_per_panel);
    return {qr, tau};
  }
#else
  (void)use_kernel;
  (void)blocks_per_panel;
#endif
  return at::geqrf(panel);
}

}  // namespace

at::Tensor reduce_to_band_(at::Tensor a, int64_t bandwidth, int64_t panel_kernel_min_batch,
                           int64_t panel_kernel_rows_per_panel, int64_t panel_blocks_per_panel) {
  TORCH_CHECK(a.dim() == 3 && a.size(1) == a.size(2), "reduce_to_band_ expects [B, n, n], got ",
              spectrum_fast::dims(a.sizes()));
  TORCH_CHECK(bandwidth >= 1, "reduce_to_band_: bandwidth must be at least 1, got ", spectrum_fast::num(bandwidth));
  const int64_t batch = a.size(0), n = a.size(2), b = bandwidth;
#ifdef SPECTRUM_FAST_WITH_CUDA
  const bool kernel_fits = b <= householder_panels_max_columns();
#else
  const bool kernel_fits = false;  // not built
#endif
  for (int64_t k = 0; k < std::max<int64_t>(n - b - 1, 0); k += b) {
    const int64_t p0 = k + b, m = n - p0;
    at::Tensor panel = a.slice(1, p0).slice(2, k, k + b);
    const bool use_kernel = kernel_fits && panel_kernel_min_batch > 0 && a.is_cuda() &&
                            (a.scalar_type() == at::kDouble || a.scalar_type() == at::kFloat) &&
                            batch >= panel_kernel_min_batch &&
                            batch * panel_kernel_rows_per_panel >= m;
    auto [qr, tau] = panel_geqrf(panel, use_kernel, panel_blocks_per_panel);
    // Q = I - V T V^T (the "UT" compact form), T from T^-1 = diag(1/tau) + strictly-upper(V^T V);
    // tau == 0 marks an identity reflector, whose vector is zeroed (ops/band.py says why).
    const int64_t r = tau.size(-1);
    at::Tensor v = at::tril(qr.narrow(-1, 0, r), -1);
    v.diagonal(0, -2, -1).fill_(1);
    at::Tensor identity = tau.eq(0);
    v.masked_fill_(identity.unsqueeze(-2), 0);
    at::Tensor t_inv = at::triu(at::matmul(v.mT(), v), 1);
    t_inv.diagonal(0, -2, -1).copy_(at::where(identity, at::ones_like(tau), tau.reciprocal()));
    at::Tensor eye = at::eye(r, a.options()).expand_as(t_inv);
    at::Tensor t = at::linalg_solve_triangular(t_inv, eye, /*upper=*/true);
    at::Tensor upper = at::triu(qr.narrow(-2, 0, r));
    panel.zero_();
    panel.narrow(1, 0, r).copy_(upper);
    a.slice(1, k, k + b).slice(2, p0).copy_(panel.mT());
    at::Tensor trailing = a.slice(1, p0).slice(2, p0);
    at::Tensor y = at::matmul(trailing, at::matmul(v, t));
    at::Tensor z = y - 0.5 * at::matmul(v, at::matmul(t.mT(), at::matmul(v.mT(), y)));
    trailing.baddbmm_(at::cat({v, z}, -1), at::cat({z, v}, -1).mT(), /*beta=*/1, /*alpha=*/-1);
  }
  return a;
}
