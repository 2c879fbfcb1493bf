// The CUDA kernels' launchers (csrc/*.cu), for csrc/cuda_entry_points.cpp, which checks the
// arguments first: the launchers assume float32 or float64 CUDA tensors of valid shapes. Keeping the checks
// in host code keeps the .cu files to kernels and launches.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

// Householder QR of panels [B, m, b] (b <= 32, stride 1 along b) in place; tau [B, min(m, b)].
void launch_householder_panels(const at::Tensor& panels, const at::Tensor& tau);

// The same with each panel on a cluster of blocks_per_panel blocks (0: about 512 rows per block),
// the panel in their shared memory; false (nothing launched) where it does not fit on the device.
bool launch_householder_panels_cluster(const at::Tensor& panels, const at::Tensor& tau, int64_t blocks_per_panel);
int64_t householder_panels_cluster_max_blocks();

// V [B, m, r] and T [B, r, r] (contiguous, the panels' dtype) of the compact WY form of factored
// panels qr [B, m, w] (stride 1 along w) with tau [B, r] (contiguous), r = min(m, w) <= 32.
void launch_compact_wy(const at::Tensor& qr, const at::Tensor& tau, const at::Tensor& v, const at::Tensor& t);

// Dynamic shared memory one block of the chase needs for n at this bandwidth (<= 32) and lag (2 or 3).
int64_t bulge_chase_shared_bytes(int64_t n, int64_t bandwidth, bool float32, int64_t lag);
// The chase in place on contiguous bands [B, n, width], width >= 2 * bandwidth, n > 2, bandwidth
// 2..32, with blocks_per_matrix blocks (a cluster) per matrix, 1..8, sweeps started lag time steps
// apart, 2 or 3; 0 chooses (blocks from n and B; lag 2 where its shared memory fits, else 3).
void launch_bulge_chase(const at::Tensor& bands, int64_t bandwidth, int64_t blocks_per_matrix, int64_t lag);

// Shared memory per block of the pivot-block LDL^T for b x b blocks.
int64_t ldlt_unpivoted_shared_bytes(int64_t b);
// B = L diag(d) L^T without pivoting and L^-T, for float64 blocks [B, b, b] (lower triangles read,
// any strides), b <= 128, into contiguous d [B, b] and l_inv_t [B, b, b].
void launch_ldlt_unpivoted(const at::Tensor& blocks, const at::Tensor& d, const at::Tensor& l_inv_t);

// Whether the batched Jacobi eigen solver was built (setup.py found cuSOLVER).
bool small_eigh_jacobi_built();
// Eigenpairs of contiguous symmetric float64 matrices [B, n, n], n <= 32, lower triangles read: in
// place, the eigenvectors as rows; ascending eigenvalues into w [B, n]; per matrix 0 (converged) or
// not into int32 info [B], on the device. tolerance >= 0 (0: machine precision), max_sweeps >= 1.
// Returns cuSOLVER's status (0: queued), -1 if not built.
int launch_small_eigh_jacobi(const at::Tensor& vectors, const at::Tensor& w, const at::Tensor& info, double tolerance,
                             int64_t max_sweeps);
