// The Householder reflector every kernel here forms: LAPACK dlarfg's formulas for a column with
// top element alpha and sum of squares sigma below it, without dlarfg's rescaling loop (Gram
// entries are far from float64's range limits, and float32 Grams of bf16 weights from float32's).
// H = I - tau v v^T with v = (1, x_2 scale, ...) maps the column to (beta, 0, ...); sigma == 0
// gives the identity (tau = 0, beta = alpha).
#pragma once

template <typename T>
struct Reflector {
  T tau, scale, beta;
};

template <typename T>
__device__ __forceinline__ Reflector<T> householder_reflector(T alpha, T sigma) {
  Reflector<T> h{T(0), T(0), alpha};
  if (sigma != T(0)) {
    const T norm = sqrt(alpha * alpha + sigma);
    h.beta = alpha >= T(0) ? -norm : norm;
    h.tau = (h.beta - alpha) / h.beta;
    h.scale = T(1) / (alpha - h.beta);
  }
  return h;
}
