"""Graphical lasso: a sparse Gaussian graphical model from a covariance matrix.

Friedman, Hastie and Tibshirani, "Sparse inverse covariance estimation with the graphical lasso"
(Biostatistics 2008). It maximizes, over positive definite precision matrices Theta,

    log det Theta - trace(S Theta) - alpha * sum_ij |Theta_ij|        (the diagonal penalized too)

whose zero pattern is the graph: Theta_ij = 0 means variables i and j are independent given the
others. The solver is the paper's block coordinate descent on W = Theta^-1: start from
W = S + alpha I (its diagonal then stays fixed), and for each column j in turn solve the lasso

    min_beta  1/2 beta^T W11 beta - s12^T beta + alpha ||beta||_1

(W11: W without row and column j; s12: column j of S without entry j) by coordinate descent, and
set W's column j (and row j) to W11 beta. When W stops changing, column j of Theta is
theta_jj = 1 / (w_jj - w12^T beta) and theta_12 = -beta theta_jj, so Theta has exact zeros where
the lasso set beta to zero.

Pure Python loops over float64 numpy arrays: O(p^3) work per sweep, meant for small p (up to a
few hundred variables).
"""

from __future__ import annotations

import numpy as np

from .errors import SpectrumFastError


def graphical_lasso(covariance, alpha: float, *, max_iter: int = 200, tol: float = 1e-8,
                    lasso_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """-> (precision Theta, covariance estimate W = Theta^-1), float64, both symmetric.

    covariance: a symmetric p x p positive semi-definite matrix S (numpy or torch) with a positive
        diagonal; a correlation matrix makes ``alpha`` scale-free.
    alpha: the l1 penalty, > 0; larger gives a sparser graph.
    Stops when no entry of W moved by more than ``tol`` times the mean |off-diagonal of S| in a
    sweep (or after ``max_iter`` sweeps).
    """
    s = _as_covariance(covariance)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise SpectrumFastError(f"graphical_lasso: alpha must be a number > 0, got {alpha!r}")
    p = s.shape[0]
    w = s + alpha * np.eye(p)
    betas = np.zeros((p, p))  # column j: the lasso coefficients of variable j on the others
    if p == 1:
        return np.array([[1.0 / w[0, 0]]]), w
    off = ~np.eye(p, dtype=bool)
    scale = float(np.abs(s[off]).mean()) or 1.0
    for _ in range(max_iter):
        moved = 0.0
        for j in range(p):
            others = np.arange(p) != j
            w11 = w[np.ix_(others, others)]
            beta = _lasso(w11, s[others, j], alpha, betas[others, j], lasso_iter, tol * scale)
            betas[others, j] = beta
            column = w11 @ beta
            moved = max(moved, float(np.abs(column - w[others, j]).max()))
            w[others, j] = column
            w[j, others] = column
        if moved <= tol * scale:
            break
    precision = np.zeros((p, p))
    for j in range(p):
        others = np.arange(p) != j
        beta = betas[others, j]
        precision[j, j] = 1.0 / (w[j, j] - w[others, j] @ beta)
        precision[others, j] = -beta * precision[j, j]
    # Column j and row j come from two different lassos, equal only at convergence: average them.
    precision = (precision + precision.T) / 2
    return precision, (w + w.T) / 2


def partial_correlations(precision: np.ndarray) -> np.ndarray:
    """rho_ij = -Theta_ij / sqrt(Theta_ii Theta_jj): the correlation of i and j given all other
    variables (0 on the graph's missing edges); the diagonal is set to 1."""
    d = np.sqrt(np.diag(precision))
    rho = -precision / np.outer(d, d)
    np.fill_diagonal(rho, 1.0)
    return rho


def _lasso(q: np.ndarray, c: np.ndarray, alpha: float, beta: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """argmin 1/2 b^T q b - c^T b + alpha ||b||_1 (q positive definite) by cyclic coordinate
    descent from ``beta`` (a warm start: the previous sweep's solution)."""
    beta = beta.copy()
    qb = q @ beta
    for _ in range(max_iter):
        largest = 0.0
        for k in range(beta.shape[0]):
            # The coordinate's own minimizer: soft-threshold the residual correlation, then scale.
            r = c[k] - qb[k] + q[k, k] * beta[k]
            new = np.sign(r) * max(abs(r) - alpha, 0.0) / q[k, k]
            if new != beta[k]:
                qb += q[:, k] * (new - beta[k])
                largest = max(largest, abs(new - beta[k]))
                beta[k] = new
        if largest <= tol:
            break
    return beta


def _as_covariance(covariance) -> np.ndarray:
    s = covariance.detach().cpu().double().numpy() if hasattr(covariance, "detach") else np.asarray(covariance, float)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise SpectrumFastError(f"graphical_lasso: the covariance must be a square p x p matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise SpectrumFastError("graphical_lasso: the covariance has non-finite values (inf or NaN)")
    if not np.allclose(s, s.T, rtol=1e-10, atol=1e-12 * float(np.abs(s).max())):
        raise SpectrumFastError("graphical_lasso: the covariance is not symmetric")
    if (np.diag(s) <= 0).any():
        raise SpectrumFastError("graphical_lasso: the covariance has a diagonal entry <= 0 (a constant variable): "
                                "leave it out")
    return (s + s.T) / 2
