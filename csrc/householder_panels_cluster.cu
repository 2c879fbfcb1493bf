// Householder QR of many tall, narrow float64 (or float32) panels, each spread over a cluster of
// blocks and held in their shared memory: the same factorization as householder_panels.cu
// (LAPACK geqrf's layout, dlarfg's formulas without rescaling), for few or very tall panels.
//
// Why: householder_panels.cu gives a panel one block that streams it from L2 twice per column. With
// a batch of 32 that is 32 SMs busy; with a batch of 8 (what the scan's memory budget gives the
// 4096-wide matrices) or the 8160-row panels of n = 8192, a few SMs carry stage 1 and it loses to
// cuSOLVER (H100: 4096 x 8 the kernel took 16 of stage 1's 26 ms per matrix; 8192 x 4 115 of 190;
// csrc/NOTES.md). Here a cluster of up to 16 blocks (one SM each) holds a panel's rows in shared
// memory, about 512 rows per block: the panel is read from global memory once and written once, and
// the column sums every reflector needs go through distributed shared memory.
//
// How, per column j: each block sums over its rows (i > j) P[i][j] P[i][c] for every column c (c = j:
// the squares), block 0 adds row j itself; the cluster adds the blocks' sums in rank order (every
// block gets the same bits). Every thread then forms the same reflector from alpha = P[j][j] and
// sigma = the squares, and w_c = tau (P[j][c] + scale sum_{i>j} P[i][j] P[i][c]) = tau v^T P[:, c]
// without a second sum (v_i = scale P[i][j] below the diagonal). Each block writes v into column j,
// applies P[i][c] -= v_i w_c to its rows and, on the way, sums the products of the updated column
// j + 1 with every column for the next step. One cluster barrier per column; the blocks' partial
// sums sit in a two-slot buffer, so a block never overwrites a slot another is still reading (each
// slot is rewritten only after the next barrier).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>

#include "cuda_launchers.h"
#include "reflector.cuh"

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxBlocks = 16;       // the largest (non-portable) cluster on sm_90
constexpr int kRowsPerBlock = 512;   // a block's share when the kernel chooses: 128 KiB at 32 columns

// Per-column sums over the block: ``x`` belongs to column lane % BW; the sums land in out[0..BW).
template <typename T, int BW>
__device__ __forceinline__ void column_sums(T x, T (*red)[BW], T* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = BW; offset < 32; offset <<= 1) x += __shfl_down_sync(kFull, x, offset);
  if (lane < BW) red[warp][lane] = x;
  __syncthreads();
  if (threadIdx.x < BW) {
    T s = T(0);
#pragma unroll
    for (int k = 0; k < kWarps; ++k) s += red[k][threadIdx.x];
    out[threadIdx.x] = s;
  }
  __syncthreads();
}

// total[0..count) = the sum over the cluster's blocks of their mine[0..count), added in rank
// order so that every block holds the same bits.
template <typename T>
__device__ __forceinline__ void cluster_sums(const cg::cluster_group& cluster, T* mine, T* total,
                                             int count, int blocks) {
  cluster.sync();  // every block's ``mine`` is written and visible
  if (static_cast<int>(threadIdx.x) < count) {
    T s = T(0);
    for (int r = 0; r < blocks; ++r) s += cluster.map_shared_rank(mine, r)[threadIdx.x];
    total[threadIdx.x] = s;
  }
  __syncthreads();
}

// Cluster of ``blocks`` blocks per panel (blockIdx.x / blocks); block rank r holds rows
// [r * chunk, (r + 1) * chunk) of it in ``tile`` ([chunk][BW], dynamic shared memory). Panel p's
// element (i, c) sits at a[p * batch_stride + i * row_stride + c], 0 <= c < cols <= BW; BW divides
// 32; chunk >= min(rows, BW) so that block 0 owns every diagonal element.
template <typename T, int BW>
__global__ void __launch_bounds__(kThreads) householder_panels_cluster_kernel(
    T* __restrict__ a, int64_t batch_stride, int64_t row_stride, int rows, int cols,
    T* __restrict__ tau_out, int blocks, int chunk) {
  extern __shared__ __align__(16) unsigned char tile_bytes[];
  T* tile = reinterpret_cast<T*>(tile_bytes);
  __shared__ T red[kWarps][BW];
  __shared__ T mine[2][2 * BW];  // [0, BW): sums over the block's rows; [BW, 2 BW): row j (block 0)
  __shared__ T total[2 * BW];
  const cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t panel = blockIdx.x / blocks;
  T* p = a + panel * batch_stride;
  const int steps = min(rows, cols);
  T* tau_row = tau_out + panel * steps;
  const int row0 = rank * chunk;
  const int local_rows = max(0, min(rows - row0, chunk));

  constexpr int kRowsPerWarp = 32 / BW;
  constexpr int kRowStep = kWarps * kRowsPerWarp;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = lane % BW;    // this lane's column
  const int sub = lane / BW;  // which of its warp's rows
  const bool in_cols = c < cols;

  // Rows of the warp's iterations: the same count for every lane (the first loop shuffles).
  for (int base = warp * kRowsPerWarp; base < local_rows; base += kRowStep) {
    const int li = base + sub;
    if (li < local_rows) tile[li * BW + c] = in_cols ? p[(row0 + li) * row_stride + c] : T(0);
  }
  __syncthreads();

  // The first step's sums: column 0 below the diagonal times every column.
  T acc = T(0);
  for (int base = warp * kRowsPerWarp; base < local_rows; base += kRowStep) {
    const int li = base + sub;
    const bool valid = li < local_rows;
    const T x = valid ? tile[li * BW + c] : T(0);
    const T x0 = __shfl_sync(kFull, x, sub * BW);  // column 0 of this lane's row
    if (valid && in_cols && row0 + li > 0) acc += x0 * x;
  }

  int slot = 0;
  for (int j = 0; j < steps; ++j) {
    column_sums<T, BW>(acc, red, mine[slot]);
    if (threadIdx.x < BW)  // row j, from block 0 (it owns rows 0..BW-1); the others add zeros
      mine[slot][BW + threadIdx.x] = rank == 0 && static_cast<int>(threadIdx.x) < cols ? tile[j * BW + threadIdx.x] : T(0);
    cluster_sums(cluster, mine[slot], total, 2 * BW, blocks);
    slot ^= 1;
    const auto h = householder_reflector(total[BW + j], total[j]);
    const T tau = h.tau, scale = h.scale, beta = h.beta;
    if (rank == 0 && threadIdx.x == 0) tau_row[j] = tau;
    const bool last = j + 1 >= cols;  // no columns to the right: nothing to update (same j in every block)

    // v into column j below the diagonal; P -= v w^T right of column j, rows i >= j (v_j = 1); the
    // next step's sums over rows i > j + 1 of the updated column j + 1 times every column c > j.
    const T wc = (!last && in_cols && c > j) ? tau * (total[BW + c] + scale * total[c]) : T(0);
    acc = T(0);
    for (int base = warp * kRowsPerWarp; base < local_rows; base += kRowStep) {
      const int li = base + sub;
      const bool valid = li < local_rows;
      const int i = row0 + li;
      const T x = valid ? tile[li * BW + c] : T(0);
      const T xj = __shfl_sync(kFull, x, sub * BW + j);
      T y = x;
      if (valid && i == j && c == j) {
        tile[li * BW + j] = beta;  // by its owner: no other thread touches this entry in the step
      } else if (valid && i > j) {
        if (c == j) {
          tile[li * BW + j] = xj * scale;
        } else if (c > j && in_cols) {
          y = x - (xj * scale) * wc;
          tile[li * BW + c] = y;
        }
      } else if (valid && i == j && c > j && in_cols) {
        y = x - wc;
        tile[li * BW + c] = y;
      }
      if (!last) {
        const T next = __shfl_sync(kFull, y, sub * BW + j + 1);
        if (valid && in_cols && c > j && i > j + 1) acc += next * y;
      }
    }
    if (last) break;
  }
  __syncthreads();

  for (int base = warp * kRowsPerWarp; base < local_rows; base += kRowStep) {
    const int li = base + sub;
    if (li < local_rows && in_cols) p[(row0 + li) * row_stride + c] = tile[li * BW + c];
  }
  cluster.sync();  // no block leaves while another may still read its partial sums
}

template <typename T, int BW>
bool launch(const at::Tensor& panels, const at::Tensor& tau, int blocks) {
  const int64_t batch = panels.size(0);
  const int rows = static_cast<int>(panels.size(1)), cols = static_cast<int>(panels.size(2));
  if (blocks <= 0) blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  blocks = std::max(1, std::min(blocks, kMaxBlocks));
  int chunk = (rows + blocks - 1) / blocks;
  if (blocks > 1) chunk = std::max(chunk, std::min(rows, BW));  // block 0 owns every diagonal element
  const size_t shared = static_cast<size_t>(chunk) * BW * sizeof(T);
  const int device = panels.device().index();
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  auto kernel = householder_panels_cluster_kernel<T, BW>;
  cudaFuncAttributes attributes = {};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (shared + attributes.sharedSizeBytes > static_cast<size_t>(limit)) return false;  // too tall for the cluster
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  // A cluster the device cannot take (too big, or non-portable sizes refused) is not an error:
  // the caller falls back to the streaming kernel. The failed call's error is cleared.
  if (blocks > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(batch * blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = shared;
  config.stream = c10::cuda::getCurrentCUDAStream(device);
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = static_cast<unsigned>(blocks);
  cluster[0].val.clusterDim.y = cluster[0].val.clusterDim.z = 1;
  config.attrs = cluster;
  config.numAttrs = 1;
  int resident = 0;
  if (cudaOccupancyMaxActiveClusters(&resident, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (resident == 0) return false;  // no GPC takes a cluster this big with this much shared memory
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, panels.data_ptr<T>(), panels.stride(0), panels.stride(1),
                                    rows, cols, tau.data_ptr<T>(), blocks, chunk));
  return true;
}

}  // namespace

int64_t householder_panels_cluster_max_blocks() { return kMaxBlocks; }

bool launch_householder_panels_cluster(const at::Tensor& panels, const at::Tensor& tau, int64_t blocks_per_panel) {
  const int blocks = static_cast<int>(blocks_per_panel);
  const bool narrow = panels.size(2) <= 16;
  if (panels.scalar_type() == at::kFloat)
    return narrow ? launch<float, 16>(panels, tau, blocks) : launch<float, 32>(panels, tau, blocks);
  return narrow ? launch<double, 16>(panels, tau, blocks) : launch<double, 32>(panels, tau, blocks);
}
