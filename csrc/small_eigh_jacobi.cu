// Eigenpairs of many small symmetric float64 matrices (n <= 32) on the device, without the host:
// the cyclic two-sided Jacobi method, one block of 32 x 32 threads per matrix. One user: the
// randomized SVD's l x l eigen problem of B B^T (spectrum_fast/linalg/truncated_svd.py, l = k + 10
// = 26 at k = 16), which inside the call's CUDA graph must not wait for the host:
// torch.linalg.eigh reads its solver's convergence flags on the host (a synchronization, which
// stops a graph capture), and the host eigen solve cost the call a round trip (~0.1-0.2 ms of
// ~1.1, bench/probes/truncated_svd_calls_h100_8306229.log). cuSOLVER's batched Jacobi solver
// (syevjBatched) did the job first, in 0.14 ms per 26 x 26 solve (18.5 us a sweep, 7 sweeps;
// bench/probes/small_eigh_jacobi_h100_24335d0.log), 15% of the call's kernel time.
//
// The method (Golub & Van Loan, "Matrix Computations", 8.5): a sweep rotates every pair (p, q)
// once, J^T A J zeroing a_pq, and V <- V J accumulates the eigenvectors. Pairs are scheduled by
// the round-robin ("circle") ordering, so a round's n / 2 rotations touch disjoint rows and
// columns and are applied at once: each thread owns one entry (i, j) and computes its new value
// from the four entries of rows {i, partner(i)} x columns {j, partner(j)}. A and V live in shared
// memory, double-buffered: a round reads one copy and writes the other, so it needs two barriers
// (after the rotations are computed, after they are applied). A sweep is n - 1 rounds (n rounded
// up to even; an odd n gets a zero row and column, whose pairs never rotate). Convergence is
// checked before each sweep: off(A) <= tolerance ||A||_F (tolerance 0: machine precision);
// Jacobi converges quadratically, ~6-10 sweeps here. The matrix is scaled by its largest entry
// first (no overflow in the sums of squares); eigenvalues are scaled back and sorted ascending
// with their vectors at the end. A NaN never converges: its matrix is reported in info.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cfloat>

#include "cuda_launchers.h"

namespace {

constexpr int kMax = 32;
constexpr int kLd = kMax + 1;  // padded rows: the column reads of a round hit distinct banks
constexpr int kThreads = kMax * kMax;

// Sum (or max) over the block; every thread gets the result. ``partial`` holds 32 values.
template <bool kMaximum>
__device__ double block_reduce(double value, double* partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const double other = __shfl_down_sync(0xffffffffu, value, offset);
    value = kMaximum ? fmax(value, other) : value + other;
  }
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = partial[lane];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double other = __shfl_down_sync(0xffffffffu, value, offset);
      value = kMaximum ? fmax(value, other) : value + other;
    }
    if (lane == 0) partial[0] = value;
  }
  __syncthreads();
  value = partial[0];
  __syncthreads();  // partial is reused by the next reduction
  return value;
}

__global__ void __launch_bounds__(kThreads) small_eigh_jacobi_kernel(const double* __restrict__ input,
                                                                   int64_t batch_stride, int64_t row_stride,
                                                                   int64_t col_stride, int n, int max_sweeps,
                                                                   double tolerance, double* __restrict__ values,
                                                                   double* __restrict__ vectors,
                                                                   int* __restrict__ info) {
  __shared__ double a[2][kMax * kLd];
  __shared__ double v[2][kMax * kLd];
  __shared__ int partner[kMax];
  __shared__ double keep[kMax], mix[kMax];  // new row/column j = keep_j * old j + mix_j * old partner(j)
  __shared__ double partial[32];
  const int j = threadIdx.x & 31, i = threadIdx.x >> 5;  // this thread's entry
  const int m = n + (n & 1);                               // even
  const double* src = input + blockIdx.x * batch_stride;

  // The lower triangle, scaled by the largest entry.
  double entry = i < n && j < n ? src[max(i, j) * row_stride + min(i, j) * col_stride] : 0.0;
  const double largest = block_reduce<true>(fabs(entry), partial);
  const double scale = largest > 0.0 && largest <= DBL_MAX ? largest : 1.0;  // 0, inf, NaN: unscaled
  a[0][i * kLd + j] = entry / scale;
  v[0][i * kLd + j] = i == j ? 1.0 : 0.0;
  const double threshold = tolerance > 0.0 ? tolerance : DBL_EPSILON;
  int current = 0;
  bool converged = false;
  __syncthreads();

  for (int sweep = 0;; ++sweep) {
    const double x = i < n && j < n ? a[current][i * kLd + j] : 0.0;
    const double off = block_reduce<false>(i != j ? x * x : 0.0, partial);
    const double total = block_reduce<false>(x * x, partial);
    if (isfinite(total) && off <= threshold * threshold * total) {  // a NaN or an infinity never converges
      converged = true;
      break;
    }
    if (sweep == max_sweeps) break;
    for (int round = 0; round + 1 < m; ++round) {
      // Round-robin pairs: index m - 1 stays, the others turn by one each round.
      if (threadIdx.x < m / 2) {
        const int k = threadIdx.x;
        int p = (round + k) % (m - 1), q = k == 0 ? m - 1 : (round - k + m - 1) % (m - 1);
        if (p > q) {
          const int t = p;
          p = q;
          q = t;
        }
        const double* now = a[current];
        const double apq = now[p * kLd + q];
        double c = 1.0, s = 0.0;
        if (apq != 0.0 && q < n) {
          // tan of the angle that zeroes a_pq, the smaller root (|angle| <= pi / 4)
          const double theta = (now[q * kLd + q] - now[p * kLd + p]) / (2.0 * apq);
          const double t = copysign(1.0, theta) / (fabs(theta) + hypot(1.0, theta));
          c = 1.0 / sqrt(1.0 + t * t);
          s = t * c;
        }
        partner[p] = q;
        partner[q] = p;
        keep[p] = c;
        keep[q] = c;
        mix[p] = -s;
        mix[q] = s;
      }
      __syncthreads();
      if (i < m && j < m) {
        const int pi = partner[i], pj = partner[j];
        const double* now = a[current];
        const double ki = keep[i], mi = mix[i], kj = keep[j], mj = mix[j];
        double next = ki * (kj * now[i * kLd + j] + mj * now[i * kLd + pj]) +
                      mi * (kj * now[pi * kLd + j] + mj * now[pi * kLd + pj]);
        if (pj == i && mj != 0.0) next = 0.0;  // the entry this round's rotation zeroes
        a[current ^ 1][i * kLd + j] = next;
        const double* vnow = v[current];
        v[current ^ 1][i * kLd + j] = kj * vnow[i * kLd + j] + mj * vnow[i * kLd + pj];
      }
      current ^= 1;
      __syncthreads();
    }
  }

  // Ascending order: eigenvalue j goes to place rank(j) (ties by index), its vector with it.
  const int64_t out = blockIdx.x;
  if (i < n && j < n) {
    const double mine = a[current][j * kLd + j];
    int rank = 0;
    for (int other = 0; other < n; ++other) {
      const double value = a[current][other * kLd + other];
      rank += value < mine || (value == mine && other < j);
    }
    vectors[(out * n + i) * n + rank] = v[current][i * kLd + j];
    if (i == 0) values[out * n + rank] = mine * scale;
  }
  if (threadIdx.x == 0) info[out] = converged ? 0 : 1;
}

}  // namespace

void launch_small_eigh_jacobi(const at::Tensor& a, const at::Tensor& values, const at::Tensor& vectors,
                              const at::Tensor& info, double tolerance, int64_t max_sweeps) {
  const auto stream = c10::cuda::getCurrentCUDAStream(a.device().index());
  small_eigh_jacobi_kernel<<<static_cast<unsigned>(a.size(0)), kThreads, 0, stream>>>(
      a.data_ptr<double>(), a.stride(0), a.stride(1), a.stride(2), static_cast<int>(a.size(1)),
      static_cast<int>(max_sweeps), tolerance, values.data_ptr<double>(), vectors.data_ptr<double>(),
      info.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
