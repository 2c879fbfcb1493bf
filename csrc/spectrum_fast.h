// The entry points of spectrum_fast._C, one per operation; csrc/module.cpp binds them.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

// Spectrum's statistics from ascending Gram eigenvalues [B, k] float64 (CPU) -> [B, 7].
at::Tensor snr_statistics(const at::Tensor& eigvals, int64_t n, int64_t m);

// Stage 1 of the eigen route, dense -> band, in place on symmetric [B, n, n] (float64 advised),
// ops.band.reduce_to_band_'s operations with the loop in C++. Panels go to householder_panels_
// (CUDA builds) when panel_kernel_min_batch > 0, B >= panel_kernel_min_batch and
// B * panel_kernel_rows_per_panel >= the panel's rows, with householder_panels_'s
// blocks_per_panel = panel_blocks_per_panel; their V and T to compact_wy where compact_wy is set
// (CUDA builds, panels the kernel factored). panels_per_update > 1: one trailing update per that
// many panels (ops.band._reduce_to_band_grouped_'s operations).
at::Tensor reduce_to_band_(at::Tensor a, int64_t bandwidth, int64_t panel_kernel_min_batch,
                           int64_t panel_kernel_rows_per_panel, int64_t panel_blocks_per_panel,
                           int64_t panels_per_update, bool compact_wy);

#ifdef SPECTRUM_FAST_WITH_CUDA
// Householder QR of B panels [B, m, b] float64 or float32 on a CUDA device (rows contiguous, any
// row and batch stride), in place on the current stream, in LAPACK geqrf's layout; returns tau
// [B, min(m, b)] of the panels' dtype. blocks_per_panel: -1, one block per panel streaming it from
// global memory (householder_panels.cu); 0 or more, a cluster of that many blocks per panel
// holding it in shared memory (householder_panels_cluster.cu; 0 chooses), or the former where the
// panel does not fit.
at::Tensor householder_panels_(at::Tensor panels, int64_t blocks_per_panel);
int64_t householder_panels_max_columns();
// The compact WY form of panels factored in geqrf's layout (qr [B, m, w], rows contiguous; tau
// [B, r], r = min(m, w) <= householder_panels_max_columns()) on the current stream -> (V [B, m, r]
// explicit, unit lower trapezoidal, zero columns where tau is 0; T [B, r, r] upper triangular),
// with H_0 ... H_{r-1} = I - V T V^T.
std::tuple<at::Tensor, at::Tensor> compact_wy(at::Tensor qr, at::Tensor tau);
// Band -> tridiagonal by bulge chasing, sweeps pipelined, in place on bands [B, n, width] float64
// or float32 (lower band storage, width >= 2 * bandwidth) on the current stream -> (diagonals
// [B, n], subdiagonals [B, n - 1]). blocks_per_matrix: a cluster of that many blocks per matrix (1
// to bulge_chase_max_blocks_per_matrix()); 0 chooses from n, the batch and the device. lag: time
// steps between the starts of consecutive sweeps, 3 or 2 (fewer time steps, more sweeps in
// flight; the same result bit for bit); 0 chooses 2 where it fits in shared memory, else 3.
std::tuple<at::Tensor, at::Tensor> band_to_tridiagonal_(at::Tensor bands, int64_t bandwidth, int64_t blocks_per_matrix,
                                                        int64_t lag);
int64_t bulge_chase_max_bandwidth();
int64_t bulge_chase_max_blocks_per_matrix();
// The inertia count's pivot blocks (spectrum_fast/linalg/inertia.py): for symmetric float64 blocks
// [B, b, b] on a CUDA device (lower triangles read, any strides), b <= ldlt_unpivoted_max_size(),
// on the current stream: B = L diag(d) L^T without pivoting -> (d [B, b], L^-T [B, b, b]). A zero
// pivot gives 0 in place of its inverse (the caller checks |d|).
std::tuple<at::Tensor, at::Tensor> ldlt_unpivoted(at::Tensor blocks);
int64_t ldlt_unpivoted_max_size();
// Eigenpairs of symmetric float64 matrices [B, n, n] on a CUDA device (lower triangles read),
// n <= small_eigh_jacobi_max_size() (0 where built without cuSOLVER), on the current stream,
// nothing read back on the host -> (ascending eigenvalues [B, n], eigenvectors as columns
// [B, n, n], int32 info [B]: 0 where the solver converged within max_sweeps sweeps to tolerance,
// 0: machine precision).
std::tuple<at::Tensor, at::Tensor, at::Tensor> small_eigh_jacobi(at::Tensor a, double tolerance, int64_t max_sweeps);
int64_t small_eigh_jacobi_max_size();
#endif
