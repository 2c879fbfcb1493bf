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
// columns and are applied at once: each thread owns one entry (i, j), works out the rotations of
// row i and column j itself, and computes the entry's new value from the four entries of rows
// {i, partner(i)} x columns {j, partner(j)}. A and V live in shared memory, double-buffered: a
// round reads one copy and writes the other, one barrier a round. A sweep is n - 1 rounds (n rounded
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

// Warp, then block: the sums (kMaximum false) or maxima of two values; every thread gets them.
template <bool kMaximum>
__device__ double2 block_reduce(double2 value, double2* partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  auto combine = [](double2 x, double2 y) {
    return kMaximum ? make_double2(fmax(x.x, y.x), fmax(x.y, y.y)) : make_double2(x.x + y.x, x.y + y.y);
  };
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = combine(value, make_double2(__shfl_down_sync(0xffffffffu, value.x, offset),
                                        __shfl_down_sync(0xffffffffu, value.y, offset)));
  }
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = partial[lane];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      value = combine(value, make_double2(__shfl_down_sync(0xffffffffu, value.x, offset),
                                          __shfl_down_sync(0xffffffffu, value.y, offset)));
    }
    if (lane == 0) partial[0] = value;
  }
  __syncthreads();
  value = partial[0];
  __syncthreads();  // partial is reused by the next reduction
  return value;
}

// Round r of the round-robin ordering on m (even) indices: m - 1 stays, the others turn; index x
// meets (2 r - x) mod (m - 1), and the one that would meet itself (x = r) meets m - 1.
__device__ int partner_in_round(int x, int round, int m) {
  if (x == m - 1) return round;
  if (x == round) return m - 1;
  return ((2 * round - x) % (m - 1) + (m - 1)) % (m - 1);
}

// The rotation of pair {x, partner} in this round, as the coefficients of index x: new row (or
// column) x = keep * old x + mix * old partner. J = [[c, s], [-s, c]] on (p, q), p < q, the
// smaller angle that zeroes a_pq (t = tan, Golub & Van Loan 8.5.2, written without a division
// by a_pq: t = sign(d) e / (|d| + sqrt(d^2 + e^2)), d = a_qq - a_pp, e = 2 a_pq).
__device__ void rotation(const double* a, int x, int partner, int n, double& keep, double& mix) {
  const int p = min(x, partner), q = max(x, partner);
  const double e = 2.0 * a[p * kLd + q];
  keep = 1.0;
  mix = 0.0;
  if (e == 0.0 || q >= n) return;
  const double d = a[q * kLd + q] - a[p * kLd + p];
  // max(.., |e|): where d^2 + e^2 underflows, r >= |e| keeps t finite.
  const double r = fmax(sqrt(d * d + e * e), fabs(e));
  const double t = copysign(1.0, d) * e / (fabs(d) + r);
  const double c = rsqrt(1.0 + t * t);
  keep = c;
  mix = x == p ? -t * c : t * c;
}

__global__ void __launch_bounds__(kThreads) small_eigh_jacobi_kernel(const double* __restrict__ input,
                                                                   int64_t batch_stride, int64_t row_stride,
                                                                   int64_t col_stride, int n, int max_sweeps,
                                                                   double tolerance, double* __restrict__ values,
                                                                   double* __restrict__ vectors,
                                                                   int* __restrict__ info) {
  __shared__ double a[2][kMax * kLd];
  __shared__ double v[2][kMax * kLd];
  __shared__ double2 partial[32];
  const int j = threadIdx.x & 31, i = threadIdx.x >> 5;  // this thread's entry
  const int m = n + (n & 1);                               // even
  const double* src = input + blockIdx.x * batch_stride;

  // The lower triangle, scaled by the largest entry.
  const double entry = i < n && j < n ? src[max(i, j) * row_stride + min(i, j) * col_stride] : 0.0;
  const double largest = block_reduce<true>(make_double2(fabs(entry), 0.0), partial).x;
  const double scale = largest > 0.0 && largest <= DBL_MAX ? largest : 1.0;  // 0, inf, NaN: unscaled
  a[0][i * kLd + j] = entry / scale;
  v[0][i * kLd + j] = i == j ? 1.0 : 0.0;
  const double threshold = tolerance > 0.0 ? tolerance : DBL_EPSILON;
  int current = 0;
  bool converged = false;
  __syncthreads();

  for (int sweep = 0;; ++sweep) {
    const double x = i < n && j < n ? a[current][i * kLd + j] : 0.0;
    const double2 sums = block_reduce<false>(make_double2(i != j ? x * x : 0.0, x * x), partial);
    // off(A) <= threshold ||A||_F; a NaN or an infinity never converges.
    if (isfinite(sums.y) && sums.x <= threshold * threshold * sums.y) {
      converged = true;
      break;
    }
    if (sweep == max_sweeps) break;
    for (int round = 0; round + 1 < m; ++round) {
      // Each thread works out the rotations of its row and its column itself (the same numbers
      // every thread of those pairs gets): one barrier a round instead of two.
      if (i < m && j < m) {
        const double* now = a[current];
        const int pi = partner_in_round(i, round, m), pj = partner_in_round(j, round, m);
        double ki, mi, kj, mj;
        rotation(now, j, pj, n, kj, mj);
        if (pi == j) {  // i and j are one pair
          ki = kj;
          mi = -mj;
        } else if (i == j) {
          ki = kj;
          mi = mj;
        } else {
          rotation(now, i, pi, n, ki, mi);
        }
        double next = ki * (kj * now[i * kLd + j] + mj * now[i * kLd + pj]) +
                      mi * (kj * now[pi * kLd + j] + mj * now[pi * kLd + pj]);
        if (pi == j && mj != 0.0) next = 0.0;  // the entry this rotation zeroes
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
