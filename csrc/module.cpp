// spectrum_fast._C: binds the entry points declared in spectrum_fast.h. The CUDA ones exist only
// in a build with CUDA (setup.py defines SPECTRUM_FAST_WITH_CUDA there); spectrum_fast/_extension.py
// asks the module what it has.
#include <torch/extension.h>

#include "spectrum_fast.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "spectrum_fast compiled kernels";
  mod.def("snr_statistics", &snr_statistics, "Spectrum statistics from ascending Gram eigenvalues [B, k] -> [B, 7]",
          pybind11::arg("eigvals"), pybind11::arg("n"), pybind11::arg("m"));
  mod.def("reduce_to_band_", &reduce_to_band_,
          "Dense -> band in place on symmetric [B, n, n] (ops.band.reduce_to_band_'s operations, the loop in "
          "C++), on the tensor's device and current stream",
          pybind11::arg("a"), pybind11::arg("bandwidth"), pybind11::arg("panel_kernel_min_batch") = 0,
          pybind11::arg("panel_kernel_rows_per_panel") = 128, pybind11::arg("panel_blocks_per_panel") = -1,
          pybind11::arg("panels_per_update") = 1, pybind11::arg("compact_wy") = false,
          // The loop only calls ATen: without the GIL, the scan's reader and host threads run while it
          // queues a batch's thousands of launches.
          pybind11::call_guard<pybind11::gil_scoped_release>());
#ifdef SPECTRUM_FAST_WITH_CUDA
  mod.def("householder_panels_", &householder_panels_,
          "Householder QR of float64 or float32 panels [B, m, b] (b <= householder_panels_max_columns()) on the "
          "current CUDA stream, in place, LAPACK geqrf layout; returns tau [B, min(m, b)]. blocks_per_panel: -1 "
          "one block streaming each panel, 0 a cluster per panel holding it in shared memory (size chosen), k > 0 "
          "a cluster of k blocks",
          pybind11::arg("panels"), pybind11::arg("blocks_per_panel") = -1);
  mod.def("householder_panels_max_columns", &householder_panels_max_columns);
  mod.def("compact_wy", &compact_wy,
          "The compact WY form of panels factored in geqrf's layout (qr [B, m, w], rows contiguous; tau [B, r], "
          "r = min(m, w) <= householder_panels_max_columns()) on the current CUDA stream -> (V [B, m, r], T [B, r, r]) "
          "with H_0 ... H_{r-1} = I - V T V^T; V's columns are zero where tau is 0",
          pybind11::arg("qr"), pybind11::arg("tau"));
  mod.def("band_to_tridiagonal_", &band_to_tridiagonal_,
          "Band -> tridiagonal by pipelined bulge chasing, in place on float64 or float32 bands [B, n, width] (lower "
          "band storage, width >= 2 * bandwidth, bandwidth <= bulge_chase_max_bandwidth()) on the current "
          "CUDA stream, a cluster of blocks_per_matrix blocks per matrix (0: chosen), sweeps started lag time "
          "steps apart (3 or 2, the same result; 0: 2 where it fits, else 3); returns (diagonals [B, n], "
          "subdiagonals [B, n - 1])",
          pybind11::arg("bands"), pybind11::arg("bandwidth"), pybind11::arg("blocks_per_matrix") = 0,
          pybind11::arg("lag") = 3);
  mod.def("bulge_chase_max_bandwidth", &bulge_chase_max_bandwidth);
  mod.def("bulge_chase_max_blocks_per_matrix", &bulge_chase_max_blocks_per_matrix);
  mod.def("ldlt_unpivoted", &ldlt_unpivoted,
          "Symmetric float64 blocks [B, b, b] (lower triangles read, b <= ldlt_unpivoted_max_size()) = L diag(d) L^T "
          "without pivoting, on the current CUDA stream -> (d [B, b], L^-T [B, b, b]); a zero pivot's inverse is "
          "taken as 0",
          pybind11::arg("blocks"));
  mod.def("ldlt_unpivoted_max_size", &ldlt_unpivoted_max_size);
  mod.def("small_eigh_jacobi", &small_eigh_jacobi,
          "Eigenpairs of symmetric float64 matrices [B, n, n] (lower triangles read, n <= small_eigh_jacobi_max_size(), "
          "0 in a build without cuSOLVER) by cuSOLVER's batched Jacobi solver on the current CUDA stream, nothing "
          "read back on the host -> (ascending eigenvalues [B, n], eigenvectors as columns [B, n, n], int32 info [B], "
          "0 where converged within max_sweeps sweeps to tolerance, 0: machine precision)",
          pybind11::arg("a"), pybind11::arg("tolerance") = 0.0, pybind11::arg("max_sweeps") = 100);
  mod.def("small_eigh_jacobi_max_size", &small_eigh_jacobi_max_size);
  mod.attr("with_cuda") = true;
#else
  mod.attr("with_cuda") = false;
#endif
}
