// Small symmetric float64 matrices B (b x b, b <= 128; lower triangles read), batched:
// B = L diag(d) L^T without pivoting, and L^-T, one block of threads per matrix. Two users:
// - the pivot blocks of the inertia count (spectrum_fast/linalg/inertia.py): they went through
//   torch's lu_factor_ex(pivot=False) and a triangular solve, which at a batch of 8 x 4096 were
//   cuSOLVER/cuBLAS calls looped over the batch (1.3-2 ms of a count's 3.1-4 ms of kernels per
//   matrix, H100, bench/probes/inertia_routes_h100_4227733-solve-vs-inverse.log) and at larger
//   batches MAGMA's batched kernels, which synchronize the device and so kept the count out of a
//   CUDA graph;
// - Cholesky QR (spectrum_fast/linalg/orthonormalize.py) up to 64 columns: for a positive
//   definite Gram, R^-1 = L^-T diag(d)^-1/2 (one pass replayed from a graph: 52 against 72 us
//   with cuSOLVER's potrf and a trsm at 26 columns, bench/probes/cholesky_qr_routes_h100_80b2a13.log).
//
// Each thread holds a fixed tile of the block, padded to kMax x kMax (32, 64 or 128, the smallest
// that holds b), in registers: rows ty + kRows p, columns tx + kCols q. A step moves one column (or
// row) through shared memory and does its updates in registers. (A first version kept the block
// in shared memory and streamed it through every step: 0.34 ms a launch at b = 128, bound by
// shared-memory traffic.) Both eliminations are b dependent steps, and a step costs ~0.4 us at the
// 32 and 64 tiles, ~1 us at 128 (bench/probes/ldlt_kernel_h100_3106379-*.log, variants of this
// kernel with the same speed): ~25 us a launch at b = 32, ~0.25 ms at b = 128.
// 1. LDL^T, right-looking, both triangles kept (symmetric updates): at step j the owners of column
//    j publish it, d_j = a_jj, a_il -= a_ij a_lj / d_j for i, l > j, and column j below the
//    diagonal becomes L's (times 1 / d_j). A zero pivot scales by 0 (the caller flags matrices
//    whose |d| is tiny against their scale; their counts are not used).
// 2. L^-1 by Gauss-Jordan on [L | I], L from shared memory, the inverse X in registers: at step k
//    the owners of row k (final by then) publish it, and rows i > k take away L_ik times it.
// Then d and (L^-1)^T are written out, every entry (zeros below the diagonal of L^-T too).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_launchers.h"

namespace {

constexpr int kLargest = 128;

template <int kMax, int kRows, int kCols>
__global__ void __launch_bounds__(kRows * kCols, 1) ldlt_unpivoted_kernel(const double* __restrict__ blocks,
                                                                        int64_t batch_stride, int64_t row_stride,
                                                                        int64_t col_stride, int b,
                                                                        double* __restrict__ d,
                                                                        double* __restrict__ l_inv_t) {
  constexpr int kP = kMax / kRows, kQ = kMax / kCols;  // each thread's tile
  constexpr int kLd = kMax + 1;  // padded rows of L in shared memory
  extern __shared__ double shared[];
  double* lower = shared;                  // L after step 1: kMax x kLd
  double* buffer = shared + kMax * kLd;    // two kMax vectors: a column or row per step, alternating
  const int tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  const double* src = blocks + blockIdx.x * batch_stride;
  double a[kP][kQ];
#pragma unroll
  for (int p = 0; p < kP; ++p) {
    const int i = ty + kRows * p;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int l = tx + kCols * q;
      // The lower triangle only: (i, l) above the diagonal is read as (l, i).
      a[p][q] = i < b && l < b ? src[max(i, l) * row_stride + min(i, l) * col_stride] : 0.0;
    }
  }

  // 1. LDL^T.
  for (int j = 0; j < b; ++j) {
    double* column = buffer + (j & 1) * kMax;
    // The owners publish column j. One branch per tile column, each with a static register
    // index: a select over q compiled to a dynamic index, which moved the tile to local memory.
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      if (tx + kCols * q == j) {
#pragma unroll
        for (int p = 0; p < kP; ++p) column[ty + kRows * p] = a[p][q];
      }
    }
    __syncthreads();  // one per step: the other buffer is the one still being read
    const double pivot = column[j];
    const double inverse = pivot != 0.0 ? 1.0 / pivot : 0.0;
    double scaled[kP];
#pragma unroll
    for (int p = 0; p < kP; ++p) scaled[p] = column[ty + kRows * p] * inverse;
    double right[kQ];
#pragma unroll
    for (int q = 0; q < kQ; ++q) right[q] = column[tx + kCols * q];
#pragma unroll
    for (int p = 0; p < kP; ++p) {
      const int i = ty + kRows * p;
#pragma unroll
      for (int q = 0; q < kQ; ++q) {
        const int l = tx + kCols * q;
        if (i > j && l > j) a[p][q] -= scaled[p] * right[q];
        if (l == j && i > j) a[p][q] = scaled[p];  // L's column
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kP; ++p) {
    const int i = ty + kRows * p;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int l = tx + kCols * q;
      if (i < b && l < i) lower[i * kLd + l] = a[p][q];
      if (i < b && l == i) d[blockIdx.x * static_cast<int64_t>(b) + i] = a[p][q];
      a[p][q] = i == l ? 1.0 : 0.0;  // X = I
    }
  }
  __syncthreads();

  // 2. X = L^-1.
  for (int k = 0; k + 1 < b; ++k) {
    double* row = buffer + (k & 1) * kMax;
#pragma unroll
    for (int p = 0; p < kP; ++p) {
      if (ty + kRows * p == k) {
#pragma unroll
        for (int q = 0; q < kQ; ++q) row[tx + kCols * q] = a[p][q];
      }
    }
    __syncthreads();
    double left[kP];
#pragma unroll
    for (int p = 0; p < kP; ++p) {
      const int i = ty + kRows * p;
      left[p] = i > k && i < b ? lower[i * kLd + k] : 0.0;
    }
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int c = tx + kCols * q;
      if (c > k) continue;
      const double x_kc = row[c];
#pragma unroll
      for (int p = 0; p < kP; ++p) a[p][q] -= left[p] * x_kc;
    }
  }

  // (L^-1)^T: entry (c, i) is X_ic.
  double* out = l_inv_t + blockIdx.x * static_cast<int64_t>(b) * b;
#pragma unroll
  for (int p = 0; p < kP; ++p) {
    const int i = ty + kRows * p;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int c = tx + kCols * q;
      if (i < b && c < b) out[c * b + i] = a[p][q];
    }
  }
}

template <int kMax>
constexpr int64_t shared_bytes() {
  return (kMax * (kMax + 1) + 2 * kMax) * static_cast<int64_t>(sizeof(double));
}

template <int kMax, int kRows, int kCols>
void launch(const at::Tensor& blocks, const at::Tensor& d, const at::Tensor& l_inv_t) {
  auto kernel = ldlt_unpivoted_kernel<kMax, kRows, kCols>;
  const int shared = static_cast<int>(shared_bytes<kMax>());
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared));
  const auto stream = c10::cuda::getCurrentCUDAStream(blocks.device().index());
  kernel<<<static_cast<unsigned>(blocks.size(0)), kRows * kCols, shared, stream>>>(
      blocks.data_ptr<double>(), blocks.stride(0), blocks.stride(1), blocks.stride(2),
      static_cast<int>(blocks.size(1)), d.data_ptr<double>(), l_inv_t.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

int64_t ldlt_unpivoted_shared_bytes(int64_t b) {
  return b <= 32 ? shared_bytes<32>() : (b <= 64 ? shared_bytes<64>() : shared_bytes<kLargest>());
}

void launch_ldlt_unpivoted(const at::Tensor& blocks, const at::Tensor& d, const at::Tensor& l_inv_t) {
  const int64_t b = blocks.size(1);
  if (b <= 32) {
    launch<32, 8, 32>(blocks, d, l_inv_t);  // 256 threads, 4 x 1 each
  } else if (b <= 64) {
    launch<64, 16, 32>(blocks, d, l_inv_t);  // 512 threads, 4 x 2 each
  } else {
    launch<kLargest, 16, 32>(blocks, d, l_inv_t);  // 512 threads, 8 x 4 each
  }
}
