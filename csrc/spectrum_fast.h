// The entry points of spectrum_fast._C, one per operation; csrc/module.cpp binds them.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

// Spectrum's statistics from ascending Gram eigenvalues [B, k] float64 (CPU) -> [B, 7].
at::Tensor snr_statistics(const at::Tensor& eigvals, int64_t n, int64_t m);

#ifdef SPECTRUM_FAST_WITH_CUDA
// Householder QR of B panels [B, m, b] float64 on a CUDA device (rows contiguous, any row and
// batch stride), in place on the current stream, in LAPACK geqrf's layout; returns tau [B, min(m, b)].
at::Tensor householder_panels_(at::Tensor panels);
int64_t householder_panels_max_columns();
// Band -> tridiagonal by bulge chasing, sweeps pipelined, in place on bands [B, n, width] float64
// (lower band storage, width >= 2 * bandwidth) on the current stream -> (diagonals [B, n],
// subdiagonals [B, n - 1]).
std::tuple<at::Tensor, at::Tensor> band_to_tridiagonal_(at::Tensor bands, int64_t bandwidth);
int64_t bulge_chase_max_bandwidth();
#endif
