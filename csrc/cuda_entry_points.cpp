// spectrum_fast._C's CUDA entry points: argument checks around the launchers of
// csrc/householder_panels*.cu, compact_wy.cu, bulge_chase.cu, ldlt_unpivoted.cu and small_eigh_jacobi.cu (which assume valid arguments). Every launch goes
// to the current CUDA stream of the tensor's device. Numbers in messages: messages.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "cuda_launchers.h"
#include "messages.h"
#include "spectrum_fast.h"

using spectrum_fast::dims;
using spectrum_fast::num;

namespace {

// The checks every entry point starts with: a CUDA tensor of float64 or float32.
void check_cuda_floating(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": needs a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat, op,
              ": needs float64 or float32, got ", t.scalar_type());
}

}  // namespace

int64_t householder_panels_max_columns() { return 32; }

at::Tensor householder_panels_(at::Tensor panels, int64_t blocks_per_panel) {
  check_cuda_floating(panels, "householder_panels_");
  TORCH_CHECK(panels.dim() == 3, "householder_panels_: needs [B, m, b], got ", dims(panels.sizes()));
  TORCH_CHECK(panels.stride(2) == 1, "householder_panels_: each panel row must be contiguous (stride 1 along b)");
  TORCH_CHECK(panels.size(2) <= householder_panels_max_columns(), "householder_panels_: at most ",
              num(householder_panels_max_columns()), " columns, got ", num(panels.size(2)));
  TORCH_CHECK(panels.size(0) <= 2147483647LL, "householder_panels_: too many panels for one launch");
  TORCH_CHECK(panels.size(1) <= 2147483647LL / 2, "householder_panels_: too many rows");
  TORCH_CHECK(blocks_per_panel >= -1 && blocks_per_panel <= householder_panels_cluster_max_blocks(),
              "householder_panels_: blocks_per_panel must be -1 (one block streaming the panel), 0 (a cluster, "
              "chosen) or up to ", num(householder_panels_cluster_max_blocks()), ", got ", num(blocks_per_panel));
  const c10::cuda::CUDAGuard guard(panels.device());
  const int64_t steps = std::min(panels.size(1), panels.size(2));
  // Poisoned: a reflector the kernel failed to write shows up as NaN, never as a plausible value.
  at::Tensor tau = at::full({panels.size(0), steps}, NAN, panels.options());
  if (panels.size(0) > 0 && steps > 0) {
    const bool clustered = blocks_per_panel >= 0 && launch_householder_panels_cluster(panels, tau, blocks_per_panel);
    if (!clustered) launch_householder_panels(panels, tau);
  }
  return tau;
}

std::tuple<at::Tensor, at::Tensor> compact_wy(at::Tensor qr, at::Tensor tau) {
  check_cuda_floating(qr, "compact_wy");
  TORCH_CHECK(qr.dim() == 3, "compact_wy: needs factored panels [B, m, w], got ", dims(qr.sizes()));
  TORCH_CHECK(qr.stride(2) == 1, "compact_wy: each panel row must be contiguous (stride 1 along w)");
  TORCH_CHECK(tau.device() == qr.device() && tau.scalar_type() == qr.scalar_type(),
              "compact_wy: tau must be on the panels' device, in their dtype");
  const int64_t batch = qr.size(0), m = qr.size(1), r = std::min(qr.size(1), qr.size(2));
  TORCH_CHECK(tau.dim() == 2 && tau.size(0) == batch && tau.size(1) == r, "compact_wy: tau must be [",
              num(batch), ", ", num(r), "], got ", dims(tau.sizes()));
  TORCH_CHECK(r <= householder_panels_max_columns(), "compact_wy: at most ", num(householder_panels_max_columns()),
              " reflectors per panel, got ", num(r));
  TORCH_CHECK(batch <= 2147483647LL, "compact_wy: too many panels for one launch");
  const c10::cuda::CUDAGuard guard(qr.device());
  // Poisoned: an entry the kernel failed to write shows up as NaN.
  at::Tensor v = at::full({batch, m, r}, NAN, qr.options());
  at::Tensor t = at::full({batch, r, r}, NAN, qr.options());
  if (batch > 0 && r > 0) launch_compact_wy(qr, tau.contiguous(), v, t);
  return {v, t};
}

int64_t bulge_chase_max_bandwidth() { return 32; }

int64_t bulge_chase_max_blocks_per_matrix() { return 8; }

std::tuple<at::Tensor, at::Tensor> band_to_tridiagonal_(at::Tensor bands, int64_t bandwidth,
                                                        int64_t blocks_per_matrix, int64_t lag) {
  check_cuda_floating(bands, "band_to_tridiagonal_");
  TORCH_CHECK(bands.dim() == 3 && bands.is_contiguous(), "band_to_tridiagonal_: needs a contiguous [B, n, width]");
  TORCH_CHECK(bandwidth >= 1 && bandwidth <= bulge_chase_max_bandwidth(), "band_to_tridiagonal_: bandwidth must be 1..",
              num(bulge_chase_max_bandwidth()), ", got ", num(bandwidth));
  const int64_t batch = bands.size(0), n = bands.size(1), width = bands.size(2);
  TORCH_CHECK(n <= 1 << 20 && batch <= 2147483647LL, "band_to_tridiagonal_: too large");
  TORCH_CHECK(n <= 2 || bandwidth == 1 || width >= std::min<int64_t>(2 * bandwidth, 2 * (n - 1)),
              "band_to_tridiagonal_: band storage of width ", num(width), " has no room for the bulges of bandwidth ",
              num(bandwidth), ": give at least ", num(2 * bandwidth), " diagonals");
  TORCH_CHECK(blocks_per_matrix >= 0 && blocks_per_matrix <= bulge_chase_max_blocks_per_matrix(),
              "band_to_tridiagonal_: blocks_per_matrix must be 0 (choose) to ",
              num(bulge_chase_max_blocks_per_matrix()), ", got ", num(blocks_per_matrix));
  TORCH_CHECK(lag == 0 || lag == 2 || lag == 3, "band_to_tridiagonal_: lag must be 2, 3 or 0 (choose), got ", num(lag));
  const c10::cuda::CUDAGuard guard(bands.device());
  if (batch > 0 && n > 2 && bandwidth > 1) {
    // Lag 3 needs the least shared memory: with lag 0 the launch takes lag 2 only where it fits.
    const int64_t shared = bulge_chase_shared_bytes(n, bandwidth, bands.scalar_type() == at::kFloat, lag == 0 ? 3 : lag);
    int limit = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, bands.device().index()));
    TORCH_CHECK(shared <= limit, "band_to_tridiagonal_: n = ", num(n), " at bandwidth ", num(bandwidth), " needs ",
                num(shared), " bytes of shared memory per block, the device has ", num(limit));
    launch_bulge_chase(bands, bandwidth, blocks_per_matrix, lag);
  }
  at::Tensor d = bands.select(2, 0).clone();
  at::Tensor e = width > 1 ? bands.narrow(1, 0, std::max<int64_t>(n - 1, 0)).select(2, 1).clone()
                           : at::zeros({batch, std::max<int64_t>(n - 1, 0)}, bands.options());
  return {d, e};
}

int64_t ldlt_unpivoted_max_size() { return 128; }

std::tuple<at::Tensor, at::Tensor> ldlt_unpivoted(at::Tensor blocks) {
  TORCH_CHECK(blocks.is_cuda(), "ldlt_unpivoted: needs a CUDA tensor, got ", blocks.device());
  TORCH_CHECK(blocks.scalar_type() == at::kDouble, "ldlt_unpivoted: needs float64, got ", blocks.scalar_type());
  TORCH_CHECK(blocks.dim() == 3 && blocks.size(1) == blocks.size(2), "ldlt_unpivoted: needs square blocks [B, b, b], got ",
              dims(blocks.sizes()));
  const int64_t batch = blocks.size(0), b = blocks.size(1);
  TORCH_CHECK(b <= ldlt_unpivoted_max_size(), "ldlt_unpivoted: blocks of at most ", num(ldlt_unpivoted_max_size()),
              " rows, got ", num(b));
  TORCH_CHECK(batch <= 2147483647LL, "ldlt_unpivoted: too many blocks for one launch");
  const c10::cuda::CUDAGuard guard(blocks.device());
  // Poisoned: an entry the kernel failed to write shows up as NaN.
  at::Tensor d = at::full({batch, b}, NAN, blocks.options());
  at::Tensor l_inv_t = at::full({batch, b, b}, NAN, blocks.options());
  if (batch > 0 && b > 0) {
    int limit = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, blocks.device().index()));
    TORCH_CHECK(ldlt_unpivoted_shared_bytes(b) <= limit, "ldlt_unpivoted: blocks of ", num(b), " rows need ",
                num(ldlt_unpivoted_shared_bytes(b)), " bytes of shared memory per block, the device has ", num(limit));
    launch_ldlt_unpivoted(blocks, d, l_inv_t);
  }
  return {d, l_inv_t};
}

int64_t small_eigh_jacobi_max_size() { return small_eigh_jacobi_built() ? 32 : 0; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> small_eigh_jacobi(at::Tensor a, double tolerance, int64_t max_sweeps) {
  TORCH_CHECK(small_eigh_jacobi_built(), "small_eigh_jacobi: this build of spectrum_fast._C has no cuSOLVER (setup.py "
              "did not find cusolverDn.h under CUDA_HOME): use torch.linalg.eigh");
  TORCH_CHECK(a.is_cuda(), "small_eigh_jacobi: needs a CUDA tensor, got ", a.device());
  TORCH_CHECK(a.scalar_type() == at::kDouble, "small_eigh_jacobi: needs float64, got ", a.scalar_type());
  TORCH_CHECK(a.dim() == 3 && a.size(1) == a.size(2), "small_eigh_jacobi: needs square matrices [B, n, n], got ",
              dims(a.sizes()));
  const int64_t batch = a.size(0), n = a.size(1);
  TORCH_CHECK(n >= 1 && n <= small_eigh_jacobi_max_size(), "small_eigh_jacobi: matrices of 1 to ",
              num(small_eigh_jacobi_max_size()), " rows, got ", num(n));
  TORCH_CHECK(batch <= 2147483647LL, "small_eigh_jacobi: too many matrices for one call");
  TORCH_CHECK(std::isfinite(tolerance) && tolerance >= 0, "small_eigh_jacobi: tolerance must be >= 0 (0: machine "
              "precision), got ", spectrum_fast::real(tolerance));
  TORCH_CHECK(max_sweeps >= 1 && max_sweeps <= 1000000, "small_eigh_jacobi: max_sweeps must be 1 to 1000000, got ",
              num(max_sweeps));
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor vectors = a.clone(at::MemoryFormat::Contiguous);  // overwritten by the solver
  // Poisoned: an entry the solver failed to write shows up as NaN, a flag as not converged.
  at::Tensor w = at::full({batch, n}, NAN, a.options());
  at::Tensor info = at::full({batch}, -1, a.options().dtype(at::kInt));
  if (batch > 0) {
    const int status = launch_small_eigh_jacobi(vectors, w, info, tolerance, max_sweeps);
    TORCH_CHECK(status == 0, "small_eigh_jacobi: cuSOLVER failed with status ", status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {w, vectors.mT(), info};
}
