"""Exact leave-one-out cross-validation curve over training time and weight decay (MPE paper §3.5, Fig. 4).

One pass of ``ntk_info.leave_one_out`` with ``steps`` and ``weight_decay`` given as 1-D grids (the
downdate roots do not depend on them) gives the exact LOO loss (1/n) Σ_i ½||y_i - f_{-i}(x_i)||² of
the MLP linearized at its initialization, trained by t full-batch GD steps with weight decay λ, at
every grid point. It is plotted against the validation loss of the closed-form predictions
(``ntk_info.dynamics.predict``) and the MPE estimate (eq. 19, ℓ(y_i, f_i + v_i e_i) with the
Laplace variance v_i of the same linear model at prior precision λ). Digits 4 vs 9 (±1 targets) by
default; ``--classes all`` uses ten one-hot outputs and the (n, n, 10, 10) NTK. Writes a PNG and
prints the grid argmin.

    .venv/bin/python experiments/loo_cv_curve.py --out results/loo_cv_curve.png
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from ntk_info.data import load_dataset  # noqa: E402
from ntk_info.dynamics import predict  # noqa: E402
from ntk_info.features import exact_ntk  # noqa: E402
from ntk_info.models import init_params, mlp  # noqa: E402
from ntk_info.mpe import loo_cv_estimate, loo_cv_exact, mpe_from_kernel  # noqa: E402
from ntk_info.training import targets  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default="4,9", help="comma-separated digit classes, or 'all'")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--lr-factor", type=float, default=1.0, help="lr = factor / (λmax(K) + max λ)")
    ap.add_argument("--steps", default="1,3,10,30,100,300,1000,3000,10000,30000,100000,inf")
    ap.add_argument("--weight-decay", default="1e-3,1e-2,1e-1,1,10,100", help="λ grid (sum loss)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/loo_cv_curve.png")
    args = ap.parse_args(argv)
    t_start = time.time()

    classes = None if args.classes == "all" else [int(c) for c in args.classes.split(",")]
    data = load_dataset("digits", classes=classes, n_train=args.n_train, seed=args.seed)
    X = data.X.reshape(data.X.shape[0], -1)
    X_val = data.X_val.reshape(data.X_val.shape[0], -1)
    binary = classes is not None and len(classes) == 2
    if binary:
        Y, Y_val = targets(data.y, kind="pm1"), targets(data.y_val, kind="pm1")
    else:
        Y, Y_val = targets(data.y, data.num_classes), targets(data.y_val, data.num_classes)
    k = Y.shape[1]
    model = mlp(num_outputs=k, width=args.width)
    params0 = init_params(model, X.shape[1:], seed=args.seed)
    f0, f0_val = np.asarray(model.apply_fn(params0, X)), np.asarray(model.apply_fn(params0, X_val))
    K = exact_ntk(model.apply_fn, params0, X, progress=False)
    K_val = exact_ntk(model.apply_fn, params0, X_val, X, progress=False)
    if k == 1:
        K, K_val = K[:, :, 0, 0], K_val[:, :, 0, 0]
    K_flat = K if k == 1 else K.transpose(0, 2, 1, 3).reshape(K.shape[0] * k, -1)
    lam_max = float(np.linalg.eigvalsh((K_flat + K_flat.T) / 2)[-1])
    steps = np.array([float(s) for s in args.steps.split(",")])
    lams = np.array([float(v) for v in args.weight_decay.split(",")])
    lr = args.lr_factor / (lam_max + lams.max())     # stable (η(λmax + λ) < 2) at every grid point
    R, R_val = Y - f0, Y_val - f0_val
    print(f"digits {args.classes}: n = {X.shape[0]}, n_val = {X_val.shape[0]}, k = {k}, MLP width {args.width}, "
          f"λmax(K) = {lam_max:.1f}, lr = {lr:.3g} (discrete GD)")

    # Exact LOO, one pass over the whole (steps × weight decay) grid.
    t0 = time.time()
    loo = loo_cv_exact(K, residuals=R, lr=lr, steps=steps, weight_decay=lams, discrete=True)   # (T, L, n)
    loo_mean = loo.mean(axis=-1)
    t_loo = time.time() - t0
    # Validation loss of the closed-form predictions, and the MPE eq. 19 estimate, per grid point.
    t0 = time.time()
    val = np.empty_like(loo_mean)
    mpe = np.empty_like(loo_mean)
    for b, lam in enumerate(lams):
        laplace = None
        for a, t in enumerate(steps):
            train_change, val_change = predict(K, R, lr=lr, steps=t, weight_decay=lam, discrete=True,
                                               cross_kernel=K_val)
            f_t = f0 + train_change.reshape(f0.shape)
            f_val = f0_val + val_change.reshape(f0_val.shape)
            val[a, b] = 0.5 * np.mean(np.sum((f_val - Y_val) ** 2, axis=1))
            if laplace is None:   # MSE: V = K(K + λI)⁻¹ does not depend on t, one O(N³) solve per λ
                laplace = mpe_from_kernel(K, f_t, Y, weight_decay=lam)
            mpe[a, b] = loo_cv_estimate(dataclasses.replace(laplace, outputs=f_t, error=f_t - Y)).mean()
    t_val = time.time() - t0

    a, b = np.unravel_index(np.argmin(loo_mean), loo_mean.shape)
    av, bv = np.unravel_index(np.argmin(val), val.shape)
    am, bm = np.unravel_index(np.argmin(mpe), mpe.shape)
    print(f"exact LOO argmin: steps = {steps[a]:g}, weight_decay = {lams[b]:g}: LOO loss {loo_mean[a, b]:.4f}, "
          f"val loss there {val[a, b]:.4f}")
    print(f"val-loss argmin:  steps = {steps[av]:g}, weight_decay = {lams[bv]:g}: val loss {val[av, bv]:.4f}, "
          f"LOO loss there {loo_mean[av, bv]:.4f}")
    print(f"MPE (eq. 19) argmin: steps = {steps[am]:g}, weight_decay = {lams[bm]:g}: val loss there "
          f"{val[am, bm]:.4f}")
    from scipy import stats

    print(f"over the {loo_mean.size} grid points: Spearman(LOO, val) = "
          f"{stats.spearmanr(loo_mean.ravel(), val.ravel())[0]:.3f}, Spearman(MPE, val) = "
          f"{stats.spearmanr(mpe.ravel(), val.ravel())[0]:.3f}")
    print(f"times: exact LOO grid {t_loo:.1f}s, closed-form val + MPE {t_val:.1f}s, total {time.time() - t_start:.1f}s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.where(np.isinf(steps), steps[np.isfinite(steps)].max() * 3, steps)
    colors = plt.cm.viridis(np.linspace(0, 0.9, lams.size))
    for b, lam in enumerate(lams):
        axes[0].plot(x, loo_mean[:, b], "-", color=colors[b], label=f"λ={lam:g}")
        axes[0].plot(x, val[:, b], "--", color=colors[b])
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("GD steps t (rightmost: t = ∞)")
    axes[0].set_ylabel("mean ½||y - f||²")
    axes[0].set_title("exact LOO (solid) vs validation (dashed)")
    axes[0].legend(fontsize=7)
    inf_row = int(np.argmax(steps)) if np.isinf(steps).any() else steps.size - 1
    axes[1].plot(lams, loo_mean[inf_row], "o-", label="exact LOO (leave_one_out)")
    axes[1].plot(lams, val[inf_row], "s--", label="validation (dynamics.predict)")
    axes[1].plot(lams, mpe[inf_row], "^:", label="MPE eq. 19 estimate")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("weight decay λ")
    axes[1].set_title(f"t = {steps[inf_row]:g}")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
