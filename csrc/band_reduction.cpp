// Stage 1 of the exact eigen route (dense -> band) with its loop in C++: the same ATen operations,
// in the same order, as spectrum_fast/ops/band.py's reduce_to_band_ (the tests compare the two),
// without Python's cost per operation (about 15 per panel, n / b panels per matrix: at n = 1024
// that cost is a fifth of the stage on the H100's first measurements, csrc/NOTES.md). Runs on the
// tensor's device, on the current stream; panels go to the compiled panel QR
// (householder_panels.cu) where the build has it and the caller's rule allows.
#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

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

// How a panel is factored: ops.band.panel_geqrf's rule and _panel_reflectors' compact WY switch.
struct PanelOptions {
  int64_t kernel_min_batch;
  int64_t kernel_rows_per_panel;
  int64_t blocks_per_panel;
  bool compact_wy;
};

// ops.band._panel_reflectors: panel [B, m, w] -> (R [B, r, w], V [B, m, r], T [B, r, r]) with
// Q = I - V T V^T (the "UT" compact form), T from T^-1 = diag(1/tau) + strictly-upper(V^T V);
// tau == 0 marks an identity reflector, whose vector is zeroed (ops/band.py says why).
std::tuple<at::Tensor, at::Tensor, at::Tensor> panel_reflectors(const at::Tensor& panel, const PanelOptions& opt) {
  const int64_t batch = panel.size(0), m = panel.size(1);
#ifdef SPECTRUM_FAST_WITH_CUDA
  const bool kernel_fits = panel.size(2) <= householder_panels_max_columns();
#else
  const bool kernel_fits = false;  // not built
#endif
  const bool use_kernel = kernel_fits && opt.kernel_min_batch > 0 && panel.is_cuda() &&
                          (panel.scalar_type() == at::kDouble || panel.scalar_type() == at::kFloat) &&
                          batch >= opt.kernel_min_batch && batch * opt.kernel_rows_per_panel >= m;
  auto [qr, tau] = panel_geqrf(panel, use_kernel, opt.blocks_per_panel);
  const int64_t r = tau.size(-1);
#ifdef SPECTRUM_FAST_WITH_CUDA
  if (opt.compact_wy && qr.is_cuda() && qr.stride(-1) == 1 && r <= householder_panels_max_columns()) {
    auto [v, t] = compact_wy(qr, tau);
    return {at::triu(qr.narrow(-2, 0, r)), v, t};
  }
#endif
  at::Tensor v = at::tril(qr.narrow(-1, 0, r), -1);
  v.diagonal(0, -2, -1).fill_(1);
  at::Tensor identity = tau.eq(0);
  v.masked_fill_(identity.unsqueeze(-2), 0);
  at::Tensor t_inv = at::triu(at::matmul(v.mT(), v), 1);
  t_inv.diagonal(0, -2, -1).copy_(at::where(identity, at::ones_like(tau), tau.reciprocal()));
  at::Tensor eye = at::eye(r, panel.options()).expand_as(t_inv);
  at::Tensor t = at::linalg_solve_triangular(t_inv, eye, /*upper=*/true);
  return {at::triu(qr.narrow(-2, 0, r)), v, t};
}

// Z = Y - V (T^T V^T Y) / 2: with it the two-sided update is A - V Z^T - Z V^T.
at::Tensor z_of(const at::Tensor& y, const at::Tensor& v, const at::Tensor& t) {
  return y - 0.5 * at::matmul(v, at::matmul(t.mT(), at::matmul(v.mT(), y)));
}

// ops.band._factor_panel_: panel k of `a` -> its R and zeros in place, mirrored into rows k..k+b-1;
// returns the panel's (V, T).
std::pair<at::Tensor, at::Tensor> factor_panel(at::Tensor& a, int64_t k, int64_t b, const PanelOptions& opt) {
  at::Tensor panel = a.slice(1, k + b).slice(2, k, k + b);
  auto [upper, v, t] = panel_reflectors(panel, opt);
  panel.zero_();
  panel.narrow(1, 0, upper.size(-2)).copy_(upper);
  a.slice(1, k, k + b).slice(2, k + b).copy_(panel.mT());
  return {v, t};
}

// One trailing update per panel (ops.band.reduce_to_band_'s loop).
void reduce_ungrouped(at::Tensor& a, int64_t b, const PanelOptions& opt) {
  const int64_t n = a.size(2);
  for (int64_t k = 0; k < std::max<int64_t>(n - b - 1, 0); k += b) {
    const int64_t p0 = k + b;
    auto [v, t] = factor_panel(a, k, b, opt);
    at::Tensor trailing = a.slice(1, p0).slice(2, p0);
    at::Tensor y = at::matmul(trailing, at::matmul(v, t));
    at::Tensor z = z_of(y, v, t);
    trailing.baddbmm_(at::cat({v, z}, -1), at::cat({z, v}, -1).mT(), /*beta=*/1, /*alpha=*/-1);
  }
}

// One trailing update per `group` panels (ops.band._reduce_to_band_grouped_, which says how).
void reduce_grouped(at::Tensor& a, int64_t b, int64_t group, const PanelOptions& opt) {
  const int64_t n = a.size(2), last = std::max<int64_t>(n - b - 1, 0);
  struct Kept {
    int64_t s;
    at::Tensor v, z;
  };
  // ops.band._stacked: [V_1..V_j Z_1..Z_j] and [Z_1..Z_j V_1..V_j] of the kept panels, rows from `row` of M.
  auto stacked = [](const std::vector<Kept>& kept, int64_t row) {
    std::vector<at::Tensor> vs, zs;
    for (const Kept& j : kept) {
      vs.push_back(j.v.slice(1, row - j.s));
      zs.push_back(j.z.slice(1, row - j.s));
    }
    std::vector<at::Tensor> vz(vs), zv(zs);
    vz.insert(vz.end(), zs.begin(), zs.end());
    zv.insert(zv.end(), vs.begin(), vs.end());
    return std::make_pair(at::cat(vz, -1), at::cat(zv, -1));
  };
  int64_t k = 0;
  while (k < last) {
    const int64_t r0 = k + b;
    at::Tensor m = a.slice(1, r0).slice(2, r0);
    auto [v0, t0] = factor_panel(a, k, b, opt);
    at::Tensor y0 = at::matmul(m, at::matmul(v0, t0));
    std::vector<Kept> kept{{0, v0, z_of(y0, v0, t0)}};
    while (static_cast<int64_t>(kept.size()) < group && r0 + (static_cast<int64_t>(kept.size()) - 1) * b < last) {
      const int64_t c = (static_cast<int64_t>(kept.size()) - 1) * b, s = c + b;
      auto [vz, zv] = stacked(kept, c);
      at::Tensor columns = m.slice(1, c).slice(2, c, c + b) - at::matmul(vz, zv.slice(1, 0, b).mT());
      auto [r, v, t] = panel_reflectors(columns.slice(1, b), opt);
      at::Tensor done = at::zeros_like(columns);
      done.slice(1, 0, b).copy_(columns.slice(1, 0, b));
      done.slice(1, b, b + r.size(-2)).copy_(r);
      m.slice(1, c).slice(2, c, c + b).copy_(done);
      m.slice(1, c, c + b).slice(2, c).copy_(done.mT());
      at::Tensor w = at::matmul(v, t);
      at::Tensor y = at::matmul(m.slice(1, s).slice(2, s), w) -
                     at::matmul(vz.slice(1, b), at::matmul(zv.slice(1, b).mT(), w));
      kept.push_back({s, v, z_of(y, v, t)});
    }
    const int64_t s_last = kept.back().s;
    auto [vz, zv] = stacked(kept, s_last);
    m.slice(1, s_last).slice(2, s_last).baddbmm_(vz, zv.mT(), /*beta=*/1, /*alpha=*/-1);
    k += static_cast<int64_t>(kept.size()) * b;
  }
}

}  // namespace

at::Tensor reduce_to_band_(at::Tensor a, int64_t bandwidth, int64_t panel_kernel_min_batch,
                           int64_t panel_kernel_rows_per_panel, int64_t panel_blocks_per_panel,
                           int64_t panels_per_update, bool compact_wy) {
  TORCH_CHECK(a.dim() == 3 && a.size(1) == a.size(2), "reduce_to_band_ expects [B, n, n], got ",
              spectrum_fast::dims(a.sizes()));
  TORCH_CHECK(bandwidth >= 1, "reduce_to_band_: bandwidth must be at least 1, got ", spectrum_fast::num(bandwidth));
  TORCH_CHECK(panels_per_update >= 1, "reduce_to_band_: panels_per_update must be at least 1, got ",
              spectrum_fast::num(panels_per_update));
  const PanelOptions opt{panel_kernel_min_batch, panel_kernel_rows_per_panel, panel_blocks_per_panel, compact_wy};
  if (panels_per_update > 1) {
    reduce_grouped(a, bandwidth, panels_per_update, opt);
  } else {
    reduce_ungrouped(a, bandwidth, opt);
  }
  return a;
}
