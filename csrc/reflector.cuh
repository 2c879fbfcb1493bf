// The Householder reflector every kernel here forms: LAPACK dlarfg's formulas for a column with
// top element alpha and sum of squares sigma below it, without dlarfg's rescaling loop (Gram
// entries are far from float64's range limits). H = I - tau v v^T with v = (1, x_2 scale, ...)
// maps the column to (beta, 0, ...); sigma == 0 gives the identity (tau = 0, beta = alpha).
#pragma once

struct Reflector {
  double tau, scale, beta;
};

__device__ __forceinline__ Reflector householder_reflector(double alpha, double sigma) {
  Reflector h{0.0, 0.0, alpha};
  if (sigma != 0.0) {
    const double norm = sqrt(alpha * alpha + sigma);
    h.beta = alpha >= 0.0 ? -norm : norm;
    h.tau = (h.beta - alpha) / h.beta;
    h.scale = 1.0 / (alpha - h.beta);
  }
  return h;
}
