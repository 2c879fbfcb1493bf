// Spectrum's per-matrix statistics from ascending Gram eigenvalues, on the CPU, one pass per row.
// Mirrors spectrum_fast/ops/stats.py::snr_statistics_torch (the tests compare the two against a
// float64 SVD); it exists so that many small matrices (MoE experts on a CPU scan) cost one call
// instead of a dozen torch ops each.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "spectrum_fast.h"

namespace {

// torch.lerp's formula, so that quantiles match torch.quantile bit for bit.
inline double lerp(double a, double b, double w) {
  return w < 0.5 ? a + w * (b - a) : b - (b - a) * (1.0 - w);
}

inline double quantile_sorted(const double* s, int64_t k, double q) {
  const double rank = q * static_cast<double>(k - 1);
  const int64_t below = static_cast<int64_t>(std::floor(rank));
  const int64_t above = static_cast<int64_t>(std::ceil(rank));
  return lerp(s[below], s[above], rank - static_cast<double>(below));
}

}  // namespace

// eigvals: [B, k] float64, ascending per row. Returns [B, 7]:
// sigma_max, sigma, threshold, signal, noise, n_signal, snr.
at::Tensor snr_statistics(const at::Tensor& eigvals, int64_t n, int64_t m) {
  TORCH_CHECK(eigvals.device().is_cpu(), "snr_statistics: eigvals must be on the CPU");
  TORCH_CHECK(eigvals.scalar_type() == at::kDouble, "snr_statistics: eigvals must be float64");
  TORCH_CHECK(eigvals.dim() == 2, "snr_statistics: eigvals must be [B, k]");
  TORCH_CHECK(n > 0 && m > 0, "snr_statistics: n and m must be positive");
  const auto ev = eigvals.contiguous();
  const int64_t batch = ev.size(0), k = ev.size(1);
  TORCH_CHECK(k > 0, "snr_statistics: need at least one eigenvalue per row");
  auto out = at::empty({batch, 7}, ev.options());
  const double beta = static_cast<double>(std::min(n, m)) / static_cast<double>(std::max(n, m));
  const double* src = ev.data_ptr<double>();
  double* dst = out.data_ptr<double>();
  std::vector<double> s(k);
  for (int64_t b = 0; b < batch; ++b) {
    const double* row = src + b * k;
    for (int64_t i = 0; i < k; ++i) s[i] = std::sqrt(row[i] > 0.0 ? row[i] : 0.0);
    const double sigma = (quantile_sorted(s.data(), k, 0.75) - quantile_sorted(s.data(), k, 0.25)) / 1.349;
    const double tau = sigma * (1.0 + std::sqrt(beta));
    double signal = 0.0, noise = 0.0;
    int64_t n_signal = 0;
    for (int64_t i = 0; i < k; ++i) {
      if (s[i] > tau) {
        signal += s[i];
        ++n_signal;
      } else {
        noise += s[i];
      }
    }
    if (n_signal == k) noise = 1.0;  // spectrum.py: no value at or below the threshold
    const double sigma_max = s[k - 1];
    double* o = dst + b * 7;
    o[0] = sigma_max;
    o[1] = sigma;
    o[2] = tau;
    o[3] = signal;
    o[4] = noise;
    o[5] = static_cast<double>(n_signal);
    o[6] = sigma_max > 0.0 ? signal / noise / sigma_max : 0.0;
  }
  return out;
}
