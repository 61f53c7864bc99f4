"""Leave-one-group-out: 'refactor' (one eigh of the complement per group) vs 'woodbury' (partial fractions
on one factorization, |B|×|B| solves) for groups of different sizes, side by side in one run; and the
MPE paper's leave-one-class-out estimate (eq. 20) against the exact leave-class-out loss.

    python experiments/bench_group_loo.py [N]          (default N = 600)
    python experiments/bench_group_loo.py N mpe        (only the MPE eq. 20 comparison)

Prints seconds per method and their ratio, the method 'auto' picks, and the largest difference between
the two (both exact). Random ReLU features of digits (p = N), one output per class (k = 10 sharing the
kernel), 300 GD steps at η = 1/λmax.
"""
import sys
import time

import numpy as np
from sklearn.datasets import load_digits

from ntk_info.group_loo import leave_group_out
from ntk_info.mpe import loco_estimate, mpe_from_kernel


def main(n=600, parts=("timing", "mpe")):
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))[:n]
    W = rng.normal(size=(64, n)) * np.sqrt(2 / 64)
    F = np.maximum(X[idx] / 16 @ W, 0) / np.sqrt(n)
    R = np.eye(10)[y[idx]]
    Fv = np.maximum(X[:100] / 16 @ W, 0) / np.sqrt(n)
    lr = 1.0 / np.linalg.eigvalsh(F @ F.T).max()
    if "timing" in parts:
        timing(F, R, Fv, lr, n)
    if "mpe" in parts:
        mpe_comparison(F, R, y[idx], n)


def timing(F, R, Fv, lr, n):
    print(f"n = {n}, p = {n}, k = 10 (shared kernel), 300 GD steps")
    print(f"{'groups':>22} {'refactor s':>11} {'woodbury s':>11} {'ratio r/w':>10} {'auto picks':>11} {'max diff':>9}")
    for count in (2, 10, 50):
        groups = np.arange(n) % count
        out, secs = {}, {}
        for method in ("refactor", "woodbury"):
            start = time.perf_counter()
            out[method] = leave_group_out(features=F, residuals=R, groups=groups, lr=lr, steps=300, discrete=True,
                                          cross_features=Fv, method=method)
            secs[method] = time.perf_counter() - start
        auto = leave_group_out(features=F, residuals=R, groups=groups, lr=lr, steps=300, discrete=True,
                               method="auto").method
        diff = np.max(np.abs(out["refactor"].cross_fit_without - out["woodbury"].cross_fit_without))
        print(f"{f'{count} of {n // count}':>22} {secs['refactor']:>11.2f} {secs['woodbury']:>11.2f} "
              f"{secs['refactor'] / secs['woodbury']:>10.2f} {max(set(auto), key=auto.count):>11} {diff:>9.1e}")


def mpe_comparison(F, R, labels, n, lam=1e-2):
    """MPE eq. 20 (sum of each member's own leverage-corrected LOO loss) vs exact leave-class-out, t = ∞."""
    K = F @ F.T
    res = leave_group_out(kernel=K, residuals=R, groups=labels, lr=1.0, steps=np.inf, weight_decay=lam)
    fitted = K @ np.linalg.solve(K + lam * np.eye(n), R)
    K4 = K[:, :, None, None] * np.eye(R.shape[1])  # the shared kernel as the (n, n, k, k) block kernel K ⊗ I
    est = loco_estimate(mpe_from_kernel(K4, fitted, R, weight_decay=lam), labels, corrected=True)
    print(f"\nleave-one-class-out loss at t = inf, lambda = {lam}: exact vs MPE eq. 20 (per-sample LOO summed)")
    for c in range(10):
        exact = 0.5 * np.sum(res.held_out_residuals[labels == c] ** 2)
        print(f"  class {c}: exact {exact:9.2f}   eq. 20 {est[c]:9.2f}   ratio {est[c] / exact:6.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600, tuple(sys.argv[2:]) or ("timing", "mpe"))
