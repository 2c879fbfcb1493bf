// Householder QR of many tall, narrow float64 (or float32) panels in one launch: the panel factorization of
// stage 1 of the exact eigen route (spectrum_fast/ops/band.py, dense -> band).
//
// Why: stage 1 factors one m x b panel per b columns of every matrix (n / b panels, b = 16..32),
// and torch.geqrf on a batch of panels loops over the matrices with one cuSOLVER call each, every
// call a chain of column-by-column kernels. On the H100 that loop, not the GEMMs of the trailing
// update, set stage 1's time (31-41 ms per 4096 matrix against a memory floor near 6 ms;
// csrc/NOTES.md has the numbers). Here one thread block factors one panel, all panels at once.
//
// Output: LAPACK geqrf's layout, as torch.geqrf returns it: R on and above the diagonal, the
// reflectors' vectors below it (unit first element implied), tau[j] per reflector, with
// H_j = I - tau_j v_j v_j^T and Q = H_0 H_1 ... H_{b-1}. dlarfg's formulas without its rescaling
// loop (Gram entries are far from float64's range limits); tau = 0 where the column below the
// diagonal is already zero.
//
// How: one block of 1024 threads per panel, column by column, the panel in global memory (L2:
// m x b doubles do not fit in shared memory for the sizes that matter, 4096 x 32 is 1 MiB). Lanes
// run over columns: BW lanes read one row of the panel in one coalesced access (32 / BW rows per
// warp), each lane keeps one column's running sum, and a row's v_i comes from its column-j lane by
// shuffle. For column j, pass 1 scales column j into v and sums v_i P[i][c] per column c > j; a
// block reduction gives w = tau (P[j][:] + v^T P); pass 2 applies P[i][c] -= v_i w_c and, on the
// way, sums the squares of column j+1 for the next reflector. Each pass issues UNROLL rows per
// lane before using them, to keep loads in flight. (The first version gave each thread whole rows:
// its warps' loads touched 32 rows each and one 4064 x 32 panel took 4.4 ms; csrc/NOTES.md.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>

#include "cuda_launchers.h"
#include "reflector.cuh"

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(kFull, x, offset);
  return x;  // complete in lane 0
}

// Sum of ``x`` over the block, returned to every thread. ``scratch`` holds kWarps doubles.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T total = T(0);
#pragma unroll
  for (int k = 0; k < kWarps; ++k) total += scratch[k];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

// Column c of rows base, base + kRowStep, ... (kUnroll of them) into x, all loads issued before
// any is used; 0 past the last row or where the lane has nothing to read.
template <typename T, int kRowStep>
__device__ __forceinline__ void load_rows(T (&x)[kUnroll], const T* p, int64_t row_stride, int base,
                                          int rows, int c, bool needed) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int i = base + u * kRowStep;
    x[u] = (needed && i < rows) ? p[i * row_stride + c] : T(0);
  }
}

// One block per panel. Panel p's element (i, c) sits at a[p * batch_stride + i * row_stride + c],
// 0 <= i < rows, 0 <= c < cols <= BW; BW divides 32.
template <typename T, int BW>
__global__ void __launch_bounds__(kThreads) householder_panels_kernel(
    T* __restrict__ a, int64_t batch_stride, int64_t row_stride, int rows, int cols,
    T* __restrict__ tau_out) {
  constexpr int kRowsPerWarp = 32 / BW;
  constexpr int kRowStep = kWarps * kRowsPerWarp;  // rows the block covers per step
  T* p = a + static_cast<int64_t>(blockIdx.x) * batch_stride;
  T* tau_row = tau_out + static_cast<int64_t>(blockIdx.x) * min(rows, cols);
  __shared__ T scratch[kWarps];
  __shared__ T partial[kWarps][BW];
  __shared__ T w[BW];
  __shared__ T reflector[2];  // tau, scale
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = lane % BW;    // this lane's column
  const int sub = lane / BW;  // which of its warp's rows
  const int first = warp * kRowsPerWarp + sub;
  const bool in_cols = c < cols;
  const int steps = min(rows, cols);

  // Squares of column 0 below the diagonal; later columns' come out of pass 2.
  T sigma_part = T(0);
  if (c == 0)
    for (int i = 1 + first; i < rows; i += kRowStep) {
      const T x = p[i * row_stride];
      sigma_part += x * x;
    }

  for (int j = 0; j < steps; ++j) {
    const T sigma = block_sum(sigma_part, scratch);
    if (threadIdx.x == 0) {
      const auto h = householder_reflector(p[j * row_stride + j], sigma);
      const T tau = h.tau, scale = h.scale, beta = h.beta;
      p[j * row_stride + j] = beta;
      tau_row[j] = tau;
      reflector[0] = tau;
      reflector[1] = scale;
    }
    __syncthreads();
    const T tau = reflector[0], scale = reflector[1];
    const int source = sub * BW + j;  // the lane holding column j of this lane's row
    if (j + 1 >= cols) {  // the last column: its vector to scale, no columns to its right
      if (c == j)
        for (int i = j + 1 + first; i < rows; i += kRowStep) p[i * row_stride + j] *= scale;
      break;
    }
    const bool needed = in_cols && c >= j;  // columns left of j are done

    // Pass 1: v into column j, and the sums v_i P[i][c] for c > j. The loop bounds are the same
    // for every lane (shuffles need the whole warp); rows past the end read as 0.
    T acc = T(0);
    for (int base = j + 1 + first; base - first < rows; base += kUnroll * kRowStep) {
      T x[kUnroll];
      load_rows<T, kRowStep>(x, p, row_stride, base, rows, c, needed);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kRowStep;
        const T v = __shfl_sync(kFull, x[u], source) * scale;
        if (c == j && i < rows) p[i * row_stride + j] = v;
        if (c > j) acc += v * x[u];
      }
    }
#pragma unroll
    for (int offset = BW; offset < 32; offset <<= 1) acc += __shfl_down_sync(kFull, acc, offset);
    if (sub == 0) partial[warp][c] = acc;  // the warp's sums, per column
    __syncthreads();
    if (threadIdx.x > j && threadIdx.x < cols) {  // w_c = tau (P[j][c] + sum_i v_i P[i][c]), v_j = 1
      T s = p[j * row_stride + threadIdx.x];
#pragma unroll 8
      for (int k = 0; k < kWarps; ++k) s += partial[k][threadIdx.x];
      w[threadIdx.x] = tau * s;
    }
    __syncthreads();

    // Pass 2: P -= v w^T right of column j (row j has v_j = 1), and the squares of the new column
    // j+1 below its diagonal for the next reflector.
    if (threadIdx.x > j && threadIdx.x < cols) p[j * row_stride + threadIdx.x] -= w[threadIdx.x];
    const T wc = (in_cols && c > j) ? w[c] : T(0);
    sigma_part = T(0);
    for (int base = j + 1 + first; base - first < rows; base += kUnroll * kRowStep) {
      T x[kUnroll];
      load_rows<T, kRowStep>(x, p, row_stride, base, rows, c, needed);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kRowStep;
        const T v = __shfl_sync(kFull, x[u], source);  // column j now holds v
        if (c > j && in_cols && i < rows) {
          const T y = x[u] - v * wc;
          p[i * row_stride + c] = y;
          if (c == j + 1 && i > j + 1) sigma_part += y * y;
        }
      }
    }
    __syncthreads();  // row j+1's new diagonal element is read by thread 0 next
  }
}

template <typename T, int BW>
void launch(const at::Tensor& panels, const at::Tensor& tau) {
  const int64_t batch = panels.size(0);
  const int rows = static_cast<int>(panels.size(1)), cols = static_cast<int>(panels.size(2));
  auto stream = c10::cuda::getCurrentCUDAStream(panels.device().index());
  householder_panels_kernel<T, BW><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      panels.data_ptr<T>(), panels.stride(0), panels.stride(1), rows, cols, tau.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_householder_panels(const at::Tensor& panels, const at::Tensor& tau) {
  const bool narrow = panels.size(2) <= 16;
  if (panels.scalar_type() == at::kFloat) {
    narrow ? launch<float, 16>(panels, tau) : launch<float, 32>(panels, tau);
  } else {
    narrow ? launch<double, 16>(panels, tau) : launch<double, 32>(panels, tau);
  }
}
