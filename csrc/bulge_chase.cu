// Band -> tridiagonal by Householder bulge chasing with the sweeps pipelined: stage 2 of the exact
// eigen route, in place on symmetric float64 (or float32) bands in lower band storage ([B, n, width], element
// (r, c), r >= c, at c * width + (r - c); width >= 2b so the bulges fit: ops.band.lower_band).
//
// Why: the Triton kernel (spectrum_fast/kernels/bulge.py) chases one sweep after the other in one
// program per matrix, about n^2 / b dependent steps: 0.7 s per 4096 matrix on the H100 however
// many run beside it, so a batch's time is that latency unless hundreds of matrices are in flight.
// Sweeps can overlap: sweep i's step k touches only rows and columns in
// [i + 1 + (k - 1) b, i + 1 + (k + 1) b), so with sweep i at step t - lag i at time t and lag = 3,
// the steps of one time step are disjoint and the result is the sequential one, bit for bit
// (tests/bulge_chasing_reference.py: reduce_dense_pipelined, checked in tests/test_bulge_chasing.py).
// With lag = 2, sweep i's step k and sweep i + 1's step k - 2 share one index, j = i + 1 +
// (k - 1) b, but no entry: sweep i touches column j only from row j + b, sweep i + 1 row j only up
// to column j; and sweep i's step k - 1, which wrote what sweep i + 1's step k - 2 reads, ran a
// time step before. So lag = 2 gives the sequential result too (checked in the same tests), in
// 2 n time steps instead of 3 n, with half as many sweeps again in flight (``lag`` below).
// Here one block per matrix runs that schedule: each time step, its warps take the active sweeps'
// steps, one step per warp at a time, then the block synchronizes.
//
// A step on a warp: lane r holds row r of the b x b block below the current diagonal block (rows
// j2.., columns j1..), read coalesced from the band storage. Right-apply the sweep's previous
// reflector (lane-local dots), form the new reflector from the block's first column (a warp sum),
// left-apply it (a warp sum per column), store, then the two-sided update of the diagonal block at
// j2 through a padded shared-memory tile. The reflector (v, tau) a sweep hands from one step to
// the next, possibly to another warp, waits in a shared-memory ring slot per active sweep.
//
// Large n keeps more sweeps in flight than a block has warps (n / (lag b) of them: 43 at n =
// 4096, b = 32 and lag 3, against 16 warps), and each warp then takes several steps per time
// step. A cluster of ``split`` blocks shares a matrix: block p takes the sweeps s with s % split
// == p, a cluster barrier ends each time step, and the band is read past L1 (__ldcg), where
// another SM's writes would not show. The schedule and each step's arithmetic do not depend on
// split: the result is the same bit for bit.
// Algorithm and formulas: tests/bulge_chasing_reference.py (dlarfg without rescaling, as the other
// kernels: Gram entries are far from float64's range limits).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>

#include "cuda_launchers.h"
#include "reflector.cuh"

namespace {

constexpr int kWarps = 16;
// Time steps between the starts of consecutive sweeps: 3 (the schedule first built) or 2 (the
// least that keeps a time step's steps apart: the header says why).
constexpr int kMinLag = 2, kMaxLag = 3;
constexpr int kMaxSplit = 8;  // blocks per matrix at most: the portable cluster size
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_all_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFull, x, offset);
  return x;  // in every lane
}

// dlarfg's reflector (reflector.cuh) for the column whose lane-r entry is ``x`` (rows 0..len-1;
// lanes past len hold 0): every lane gets tau, scale and beta.
template <typename T>
__device__ __forceinline__ Reflector<T> make_reflector(T x, int lane) {
  const T alpha = __shfl_sync(kFull, x, 0);
  const T sigma = warp_all_sum(lane > 0 ? x * x : T(0));
  return householder_reflector(alpha, sigma);
}

template <typename T, int BW>
struct WarpScratch {
  T tile[BW][BW + 1];  // a diagonal block, padded against bank conflicts
  T w[BW];
};

// d <- H d H for the len x len diagonal block at (j, j), H = I - tau v v^T with v in ``v`` (shared).
template <typename T, int BW>
__device__ void two_sided(T* band, int64_t width, int j, int len, const T* v, T tau,
                          WarpScratch<T, BW>& s, int lane) {
  const int r = lane;
  if (r < BW) {
#pragma unroll
    for (int c = 0; c < BW; ++c) {
      if (c <= r && r < len) {
        const T x = __ldcg(band + static_cast<int64_t>(j + c) * width + (r - c));
        s.tile[r][c] = x;
        s.tile[c][r] = x;
      }
    }
  }
  __syncwarp();
  T wr = T(0);
  if (r < len) {
#pragma unroll
    for (int c = 0; c < BW; ++c)
      if (c < len) wr += s.tile[r][c] * v[c];
    wr *= tau;
  }
  const T vr = r < len ? v[r] : T(0);
  const T vw = warp_all_sum(vr * wr);
  wr -= T(0.5) * tau * vw * vr;
  if (r < BW) s.w[r] = wr;
  __syncwarp();
  if (r < len) {
#pragma unroll
    for (int c = 0; c < BW; ++c) {
      if (c <= r) {
        const T y = s.tile[r][c] - (vr * s.w[c] + wr * v[c]);
        band[static_cast<int64_t>(j + c) * width + (r - c)] = y;
      }
    }
  }
  __syncwarp();  // the tile and w are reused by this warp's next step
}

// One step of sweep ``sweep`` (k = 0 starts it; k >= 1 chases one block down). ``slot`` holds the
// sweep's reflector between steps: v in slot[0..BW-1], tau in slot[BW].
template <typename T, int BW>
__device__ void sweep_step(T* band, int64_t width, int n, int b, int sweep, int k, T* slot,
                           WarpScratch<T, BW>& s, int lane) {
  const int r = lane;
  if (k == 0) {
    const int j1 = sweep + 1;
    const int len1 = min(b, n - j1);
    if (len1 < 2) return;
    T* column = band + static_cast<int64_t>(sweep) * width + 1;  // A[j1 + r][sweep]
    const T x = r < len1 ? __ldcg(column + r) : T(0);
    const auto h = make_reflector(x, r);
    if (r < len1) {
      column[r] = r == 0 ? h.beta : T(0);
      slot[r] = r == 0 ? T(1) : x * h.scale;
    }
    if (r == 0) slot[BW] = h.tau;
    __syncwarp();
    two_sided<T, BW>(band, width, j1, len1, slot, h.tau, s, lane);
    return;
  }
  const int j1 = sweep + 1 + (k - 1) * b;
  if (j1 >= n) return;
  const int len1 = min(b, n - j1);
  const int j2 = j1 + len1;
  if (len1 < 2 || j2 >= n) return;  // the sweep ended at an earlier step
  const int len2 = min(b, n - j2);
  const T tau = slot[BW];
  // Row r of the block below the diagonal block at j1: A[j2 + r][j1 + c].
  T blk[BW];
#pragma unroll
  for (int c = 0; c < BW; ++c)
    blk[c] = (r < len2 && c < len1) ? __ldcg(band + static_cast<int64_t>(j1 + c) * width + (j2 + r - j1 - c)) : T(0);
  // From the right with the sweep's last reflector: blk <- blk (I - tau v v^T).
  T dot = T(0);
#pragma unroll
  for (int c = 0; c < BW; ++c)
    if (c < len1) dot += blk[c] * slot[c];
#pragma unroll
  for (int c = 0; c < BW; ++c)
    if (c < len1) blk[c] -= tau * dot * slot[c];
  if (len2 >= 2) {
    // The new reflector annihilates the block's first column below its top; from the left.
    const auto h = make_reflector(blk[0], r);
    const T v2 = r < len2 ? (r == 0 ? T(1) : blk[0] * h.scale) : T(0);
    // The column sums v^T blk through the warp's tile: lane r writes its row v_r blk[r][c], lane c
    // adds column c in row order, every lane reads the sums back. (31 warp reductions by shuffle,
    // 5 levels each, were most of a step's instructions.) The tile is free: two_sided, the last to
    // use it, ended with __syncwarp.
    if (r < BW) {
#pragma unroll
      for (int c = 1; c < BW; ++c) s.tile[r][c] = c < len1 ? v2 * blk[c] : T(0);
    }
    __syncwarp();
    if (r >= 1 && r < BW) {
      T sum = T(0);
#pragma unroll
      for (int k = 0; k < BW; ++k) sum += s.tile[k][r];
      s.w[r] = sum;
    }
    __syncwarp();
    const T tau_v = h.tau * v2;
#pragma unroll
    for (int c = 1; c < BW; ++c)
      if (c < len1) blk[c] -= tau_v * s.w[c];
    blk[0] = r == 0 ? h.beta : T(0);
    __syncwarp();  // every lane has read v (the old slot) before it is replaced
    if (r < len2) slot[r] = v2;
    if (r == 0) slot[BW] = h.tau;
  }
  if (r < len2) {
#pragma unroll
    for (int c = 0; c < BW; ++c)
      if (c < len1) band[static_cast<int64_t>(j1 + c) * width + (j2 + r - j1 - c)] = blk[c];
  }
  __syncwarp();
  if (len2 >= 2) two_sided<T, BW>(band, width, j2, len2, slot, slot[BW], s, lane);
}

template <typename T, int BW>
__global__ void __launch_bounds__(kWarps * 32) bulge_chase_kernel(T* __restrict__ bands, int n,
                                                                   int64_t width, int b, int ring,
                                                                   int steps_per_sweep, int split, int lag) {
  extern __shared__ __align__(16) unsigned char shared_bytes_[];
  T* shared = reinterpret_cast<T*>(shared_bytes_);
  auto* scratch = reinterpret_cast<WarpScratch<T, BW>*>(shared);
  T* slots = shared + kWarps * (sizeof(WarpScratch<T, BW>) / sizeof(T));  // ring x (BW + 1)
  // ``split`` blocks (one cluster) per matrix; block ``part`` takes the sweeps s with s % split ==
  // part, so a sweep's reflector never leaves its block's ring.
  const int part = static_cast<int>(blockIdx.x % split);
  T* band = bands + static_cast<int64_t>(blockIdx.x / split) * n * width;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sweeps = n - 2;  // sweeps 0 .. n-3
  const int last_time = lag * (sweeps - 1) + steps_per_sweep;
  for (int t = 0; t <= last_time; ++t) {
    // Active sweeps: 0 <= t - lag * s <= steps_per_sweep; newest (largest s) first.
    const int newest = min(t / lag, sweeps - 1);
    const int oldest = max(0, (t - steps_per_sweep + lag - 1) / lag);
    const int mine = newest - (((newest - part) % split) + split) % split;  // newest of this block's
    for (int sw = mine - warp * split; sw >= oldest; sw -= kWarps * split) {
      sweep_step<T, BW>(band, width, n, b, sw, t - lag * sw, slots + static_cast<int64_t>(sw % ring) * (BW + 1),
                     scratch[warp], lane);
    }
    // The next time step's steps read what this one's wrote, in any block of the cluster: the
    // cluster barrier orders the global writes before those reads (release / acquire).
    if (split == 1) {
      __syncthreads();
    } else {
      cooperative_groups::this_cluster().sync();
    }
  }
}

// Shared memory of one block: the warps' scratch and the ring of reflectors handed between sweeps.
template <typename T, int BW>
size_t shared_bytes(int n, int b, int lag, int* ring, int* steps_per_sweep) {
  *steps_per_sweep = (n + b - 1) / b + 1;  // step 0, then at most ceil(n / b) chase steps
  // More slots than sweeps active at once, so a sweep's slot is free before the sweep that reuses
  // it (ring sweeps later, lag * ring > steps_per_sweep time steps later) starts.
  *ring = *steps_per_sweep / lag + 2;
  return kWarps * sizeof(WarpScratch<T, BW>) + static_cast<size_t>(*ring) * (BW + 1) * sizeof(T);
}

// Blocks per matrix when the caller leaves it to the kernel: the most, up to one more than it takes
// to give every sweep in flight its own warp (and kMaxSplit, a portable cluster), whose clusters
// for the whole batch are resident at once (each block takes a whole SM: 512 threads x 128
// registers; a second wave would double the time). H100, lag 3 (bench/probes/chase_split.py, ms
// per matrix at split 1 / 2 / 3 / 4 / 8): n = 2048 x 32 3.09 / 2.38 / 2.30 / 4.42 (two waves) /
// 6.56; 4096 x 8 39.5 / 25.8 / 20.1 / 19.2 / 18.3; 8192 x 1 1121 / 652 / 489 / 417 / 309.
template <typename T, int BW>
int choose_split(int n, int b, int lag, int64_t batch, cudaLaunchConfig_t config, cudaLaunchAttribute* cluster) {
  const int steps_per_sweep = (n + b - 1) / b + 1;
  const int in_flight = (steps_per_sweep + lag - 1) / lag;
  int split = std::min(kMaxSplit, (in_flight + kWarps - 1) / kWarps + 1);
  for (; split > 1; --split) {
    cluster->val.clusterDim.x = static_cast<unsigned>(split);
    config.gridDim = dim3(static_cast<unsigned>(batch * split));
    int resident = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&resident, bulge_chase_kernel<T, BW>, &config));
    if (resident >= batch) break;
  }
  return split;
}

template <typename T, int BW>
void launch(const at::Tensor& bands, int b, int split, int lag) {
  const int n = static_cast<int>(bands.size(1));
  const int device = bands.device().index();
  auto kernel = bulge_chase_kernel<T, BW>;
  int ring = 0, steps_per_sweep = 0;
  // lag 0: lag 2 where its longer ring fits, else 3 (the entry point checked that lag 3, or the
  // lag asked for, fits). Lag 2 was faster at every size and split measured, even where a warp
  // then takes one more sweep per time step than lag 3 gives it (2x H200,
  // bench/probes/chase_split.py at 2cd5d4a, ms per matrix, lag 3 -> 2: n = 4096 x 1 split auto
  // 116 -> 78, split 4 116 -> 86; 4096 x 11 10.6 -> 7.2; 1536 x 128 0.47 -> 0.44; 1024 x 64 0.41
  // -> 0.29).
  int chosen_lag = lag;
  if (lag == 0) {
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const bool fits = shared_bytes<T, BW>(n, b, kMinLag, &ring, &steps_per_sweep) <= static_cast<size_t>(optin);
    chosen_lag = fits ? kMinLag : kMaxLag;
  }
  const size_t shared = shared_bytes<T, BW>(n, b, chosen_lag, &ring, &steps_per_sweep);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  cudaLaunchConfig_t config = {};
  config.blockDim = dim3(kWarps * 32);
  config.stream = c10::cuda::getCurrentCUDAStream(device);
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = cluster[0].val.clusterDim.y = cluster[0].val.clusterDim.z = 1;
  config.attrs = cluster;
  config.numAttrs = 1;
  config.dynamicSmemBytes = shared;
  const int chosen_split = split > 0 ? split : choose_split<T, BW>(n, b, chosen_lag, bands.size(0), config, cluster);
  cluster[0].val.clusterDim.x = static_cast<unsigned>(chosen_split);
  config.gridDim = dim3(static_cast<unsigned>(bands.size(0) * chosen_split));
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, bands.data_ptr<T>(), n, bands.size(2), b, ring,
                                    steps_per_sweep, chosen_split, chosen_lag));
}

}  // namespace

int64_t bulge_chase_shared_bytes(int64_t n, int64_t bandwidth, bool float32, int64_t lag) {
  int ring = 0, steps_per_sweep = 0;
  const int nn = static_cast<int>(n), b = static_cast<int>(bandwidth), l = static_cast<int>(lag);
  const bool narrow = bandwidth <= 16;
  size_t bytes = 0;
  if (float32) {
    bytes = narrow ? shared_bytes<float, 16>(nn, b, l, &ring, &steps_per_sweep)
                   : shared_bytes<float, 32>(nn, b, l, &ring, &steps_per_sweep);
  } else {
    bytes = narrow ? shared_bytes<double, 16>(nn, b, l, &ring, &steps_per_sweep)
                   : shared_bytes<double, 32>(nn, b, l, &ring, &steps_per_sweep);
  }
  return static_cast<int64_t>(bytes);
}

void launch_bulge_chase(const at::Tensor& bands, int64_t bandwidth, int64_t blocks_per_matrix, int64_t lag) {
  const int split = static_cast<int>(blocks_per_matrix), b = static_cast<int>(bandwidth), l = static_cast<int>(lag);
  const bool narrow = bandwidth <= 16;
  if (bands.scalar_type() == at::kFloat) {
    narrow ? launch<float, 16>(bands, b, split, l) : launch<float, 32>(bands, b, split, l);
  } else {
    narrow ? launch<double, 16>(bands, b, split, l) : launch<double, 32>(bands, b, split, l);
  }
}
