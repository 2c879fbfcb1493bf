// Eigenpairs of many small symmetric float64 matrices (n <= 32) on the device, without the host:
// cuSOLVER's batched Jacobi solver (cusolverDnDsyevjBatched). One user: the randomized SVD's
// l x l eigen problem of B B^T (spectrum_fast/linalg/truncated_svd.py, l = k + 10 = 26 at k = 16).
// torch.linalg.eigh runs the same solver there but reads its convergence flags on the host
// (a synchronization), which keeps it out of a CUDA graph; the host eigen solve it replaced cost
// the call a round trip (copy out, LAPACK, copy back: ~0.3 ms of a 1.1 ms call at 4096 x 14336,
// bench/probes/truncated_svd_calls_h100_*.log). Here the flags stay on the device for the caller
// to check once the whole call is done.
//
// Built only where setup.py found cuSOLVER (SPECTRUM_FAST_WITH_CUSOLVER: the header and the
// library); otherwise small_eigh_jacobi_built() is false and nothing here is called.
#include <ATen/ATen.h>

#include <algorithm>

#include "cuda_launchers.h"

#ifdef SPECTRUM_FAST_WITH_CUSOLVER
#include <c10/cuda/CUDAStream.h>
#include <cusolverDn.h>

#include <map>
#include <unordered_map>
#include <utility>

namespace {

// The solver's parameters per (tolerance, sweep limit), made on first use: tolerance 0 is machine
// precision (LAPACK's accuracy); eigenvalues come sorted ascending. They are read when a solve is
// queued, so a graph captured with them keeps working. Per thread, as the handles below.
int parameters_for(double tolerance, int max_sweeps, syevjInfo_t* parameters) {
  thread_local std::map<std::pair<double, int>, syevjInfo_t> made;
  auto found = made.find({tolerance, max_sweeps});
  if (found != made.end()) {
    *parameters = found->second;
    return CUSOLVER_STATUS_SUCCESS;
  }
  int status = cusolverDnCreateSyevjInfo(parameters);
  if (status == CUSOLVER_STATUS_SUCCESS) status = cusolverDnXsyevjSetTolerance(*parameters, tolerance);
  if (status == CUSOLVER_STATUS_SUCCESS) status = cusolverDnXsyevjSetMaxSweeps(*parameters, max_sweeps);
  if (status == CUSOLVER_STATUS_SUCCESS) status = cusolverDnXsyevjSetSortEig(*parameters, 1);
  if (status == CUSOLVER_STATUS_SUCCESS) made.emplace(std::make_pair(tolerance, max_sweeps), *parameters);
  return status;
}

// Our own cuSOLVER handle per thread and device (a handle is not for concurrent use, and belongs
// to the device current when it was made). torch keeps such a pool too, but its accessor
// (at::cuda::getCurrentCUDASolverDnHandle) was an undefined symbol when this extension loaded
// with torch 2.11. Made on first use (outside any graph capture: GraphCache runs a call eagerly
// first), kept for the thread's life.
int handle_for(int device, cusolverDnHandle_t* handle) {
  thread_local std::unordered_map<int, cusolverDnHandle_t> handles;
  auto found = handles.find(device);
  if (found != handles.end()) {
    *handle = found->second;
    return CUSOLVER_STATUS_SUCCESS;
  }
  const int status = cusolverDnCreate(handle);
  if (status == CUSOLVER_STATUS_SUCCESS) handles.emplace(device, *handle);
  return status;
}

}  // namespace

bool small_eigh_jacobi_built() { return true; }

int launch_small_eigh_jacobi(const at::Tensor& vectors, const at::Tensor& w, const at::Tensor& info, double tolerance,
                             int64_t max_sweeps) {
  syevjInfo_t parameters = nullptr;
  int status = parameters_for(tolerance, static_cast<int>(max_sweeps), &parameters);
  if (status != CUSOLVER_STATUS_SUCCESS) return status;
  const int n = static_cast<int>(vectors.size(-1)), batch = static_cast<int>(vectors.size(0));
  cusolverDnHandle_t handle = nullptr;
  status = handle_for(vectors.get_device(), &handle);  // the caller has made that device current
  if (status == CUSOLVER_STATUS_SUCCESS) status = cusolverDnSetStream(handle, c10::cuda::getCurrentCUDAStream().stream());
  if (status != CUSOLVER_STATUS_SUCCESS) return status;
  // cuSOLVER is column-major: it sees each row-major matrix transposed. Its upper triangle is
  // then our lower one (read, as torch.linalg.eigh's default), and its eigenvector columns come
  // back as our rows (the caller transposes the view).
  const cusolverEigMode_t mode = CUSOLVER_EIG_MODE_VECTOR;
  const cublasFillMode_t fill = CUBLAS_FILL_MODE_UPPER;
  double* a = vectors.data_ptr<double>();
  double* values = w.data_ptr<double>();
  int workspace_size = 0;
  status = cusolverDnDsyevjBatched_bufferSize(handle, mode, fill, n, a, n, values, &workspace_size, parameters,
                                              batch);
  if (status != CUSOLVER_STATUS_SUCCESS) return status;
  // From torch's caching allocator: inside a graph capture, from the graph's own pool.
  at::Tensor workspace = at::empty({std::max(workspace_size, 1)}, vectors.options());
  return cusolverDnDsyevjBatched(handle, mode, fill, n, a, n, values, workspace.data_ptr<double>(), workspace_size,
                                 info.data_ptr<int>(), parameters, batch);
}

#else

bool small_eigh_jacobi_built() { return false; }

int launch_small_eigh_jacobi(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t) { return -1; }

#endif
