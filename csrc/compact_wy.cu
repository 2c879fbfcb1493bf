// The compact WY form of a batch of Householder-factored panels (geqrf's layout, as
// householder_panels_ leaves them): V explicit (unit lower trapezoidal, a column of zeros where
// tau is 0) and the upper triangular T with Q = H_0 ... H_{r-1} = I - V T V^T. Stage 1's trailing
// update needs both; in Python (ops.band._panel_reflectors) they take about ten ATen operations
// per panel, and the 8B scan is bound by queueing stage 1's operations (csrc/NOTES.md), so here
// they are one launch.
//
// One block per panel. The block streams the panel in chunks of rows through shared memory,
// writes V and accumulates the strictly upper part of G = V^T V (one pair of columns per thread,
// rows summed in order, so the result does not depend on timing); then one warp forms T by the
// forward recurrence of LAPACK's larft: T[j][j] = tau_j, T[0:j, j] = -tau_j T[0:j, 0:j] G[0:j, j].
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_launchers.h"

namespace {

constexpr int kMaxColumns = 32;
constexpr int kThreads = 512;  // one thread per pair of columns: 32 * 31 / 2 = 496
constexpr int kChunkRows = 64;

// V's entry (i, j) from the factored panel's row i: the reflector's vector below the diagonal, 1 on
// it, 0 above; the whole column 0 where tau_j is 0 (that reflector is the identity).
template <typename scalar_t>
__device__ __forceinline__ scalar_t v_entry(const scalar_t* row, int64_t i, int j, scalar_t tau_j) {
  if (tau_j == scalar_t(0)) return scalar_t(0);
  return i > j ? row[j] : (i == j ? scalar_t(1) : scalar_t(0));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    compact_wy_kernel(const scalar_t* __restrict__ qr, int64_t batch_stride, int64_t row_stride,
                      const scalar_t* __restrict__ tau, scalar_t* __restrict__ v, scalar_t* __restrict__ t,
                      int64_t m, int r) {
  __shared__ scalar_t chunk[kChunkRows][kMaxColumns + 1];
  __shared__ scalar_t gram[kMaxColumns][kMaxColumns + 1];
  __shared__ scalar_t t_s[kMaxColumns][kMaxColumns + 1];
  __shared__ scalar_t tau_s[kMaxColumns];
  const int64_t p = blockIdx.x;
  const scalar_t* panel = qr + p * batch_stride;
  scalar_t* v_p = v + p * m * r;
  if (threadIdx.x < r) tau_s[threadIdx.x] = tau[p * r + threadIdx.x];
  // This thread's pair (a, b), a < b: pairs are numbered b (b - 1) / 2 + a.
  int a = -1, b = -1;
  if (static_cast<int>(threadIdx.x) < r * (r - 1) / 2) {
    b = 1;
    while ((b + 1) * b / 2 <= static_cast<int>(threadIdx.x)) ++b;
    a = threadIdx.x - b * (b - 1) / 2;
  }
  __syncthreads();

  // V, and G's pairs over the rows, a chunk at a time; the next chunk's entries are loaded into
  // registers before this chunk's products, so the global loads overlap the arithmetic.
  constexpr int kPerThread = (kChunkRows * kMaxColumns + kThreads - 1) / kThreads;
  scalar_t next[kPerThread];
  // Calls f(s, i, j) for this thread's entries (i, j) of the chunk of rows from r0, s = 0, 1, ...
  auto each_entry = [&](int64_t r0, auto f) {
    const int rows = static_cast<int>(m - r0 < kChunkRows ? m - r0 : kChunkRows);
#pragma unroll
    for (int s = 0; s < kPerThread; ++s) {
      const int e = threadIdx.x + s * kThreads;
      if (e < rows * r) f(s, e / r, e % r);
    }
  };
  auto load = [&](int64_t r0) {
    each_entry(r0, [&](int s, int i, int j) {
      next[s] = v_entry(panel + (r0 + i) * row_stride, r0 + i, j, tau_s[j]);
    });
  };
  scalar_t acc = 0;
  if (m > 0) load(0);
  for (int64_t r0 = 0; r0 < m; r0 += kChunkRows) {
    const int rows = static_cast<int>(m - r0 < kChunkRows ? m - r0 : kChunkRows);
    each_entry(r0, [&](int s, int i, int j) {
      chunk[i][j] = next[s];
      v_p[(r0 + i) * r + j] = next[s];
    });
    __syncthreads();
    if (r0 + kChunkRows < m) load(r0 + kChunkRows);
    if (b >= 0) {
      for (int i = 0; i < rows; ++i) acc += chunk[i][a] * chunk[i][b];
    }
    __syncthreads();
  }
  if (b >= 0) gram[a][b] = acc;
  __syncthreads();

  // T, column by column; lane i holds row i. Column j reads columns < j only.
  if (threadIdx.x < kMaxColumns) {
    const int i = threadIdx.x;
    for (int j = 0; j < r; ++j) {
      scalar_t value = scalar_t(0);
      if (i < j) {
        scalar_t s = 0;
        for (int k = i; k < j; ++k) s += t_s[i][k] * gram[k][j];
        value = -tau_s[j] * s;
      } else if (i == j) {
        value = tau_s[j];
      }
      if (i < r) t_s[i][j] = value;
      __syncwarp();
    }
  }
  __syncthreads();
  scalar_t* t_p = t + p * r * r;
  for (int e = threadIdx.x; e < r * r; e += kThreads) t_p[e] = t_s[e / r][e % r];
}

}  // namespace

void launch_compact_wy(const at::Tensor& qr, const at::Tensor& tau, const at::Tensor& v, const at::Tensor& t) {
  const int64_t batch = qr.size(0), m = qr.size(1);
  const int r = static_cast<int>(tau.size(1));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(qr.device().index());
  AT_DISPATCH_FLOATING_TYPES(qr.scalar_type(), "compact_wy", [&] {
    compact_wy_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        qr.data_ptr<scalar_t>(), qr.stride(0), qr.stride(1), tau.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        t.data_ptr<scalar_t>(), m, r);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
