"""Check: F-SI from projected features (``ntk_info.score``, 2000 coordinates per layer) vs the exact NTK.

Task: sklearn digits 4 vs 9 (all of them, 8×8 pixels / 16, flattened by the MLP), targets ±1,
fixed split (seed 0): half train, half validation. Network: the 1-hidden-layer MLP (1024 ReLU
units, NTK parameterization) of ``ntk_info.models`` from scratch (seed 0), float64. Training: the
sum loss, ``--steps`` full-batch GD steps (discrete=True) with learning rate η = ``--lr-fraction`` ·
max_stable_lr = fraction · 2/λmax(K) (SI paper: t = 2000, η = 0.001 on MNIST with 1000 samples; on
these 8×8 digits the NTK's λmax differs, so η is set relative to the stability limit and printed).

Per-sample F-SI (SI paper eq. 16–17) is computed by ``leave_one_out`` on the exact empirical NTK
(``exact_ntk``, plain-JAX Jacobian contraction) and by ``score`` (projected kernel ΦΦᵀ) for each
projection in ``--methods`` (default: the paper's coordinate subsampling, and a Gaussian sketch)
and projection seed in ``--seeds``; printed per projection and seed: Pearson (target ≥ 0.99) and
Spearman correlation with the exact F-SI, the kernel's relative projection error; then per
projection the mean and min over seeds, and, once, the training fit.

Usage: ``python experiments/fsi_projection_check.py [--coords 2000] [--methods subsample,gaussian]
[--seeds 0,1,2,3,4] [--steps 2000] [--lr-fraction 0.5]``
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coords", type=int, default=2000, help="coords_per_layer of the projection")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch GD steps")
    parser.add_argument("--lr-fraction", type=float, default=0.5, help="η as a fraction of max_stable_lr")
    parser.add_argument("--seeds", default="0", help="comma-separated projection seeds")
    parser.add_argument("--methods", default="subsample,gaussian",
                        help="comma-separated projections (subsample, countsketch, gaussian, rademacher)")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.datasets import load_digits

    import ntk_info
    from ntk_info.dynamics import max_stable_lr
    from ntk_info.models import get_model, init_params

    digits = load_digits()
    keep = np.isin(digits.target, (4, 9))
    X_all = digits.images[keep] / 16.0
    y_all = np.where(digits.target[keep] == 9, 1.0, -1.0)
    order = np.random.default_rng(0).permutation(len(y_all))
    half = len(order) // 2
    X, Y = X_all[order[:half]], y_all[order[:half]]
    X_val, Y_val = X_all[order[half:]], y_all[order[half:]]

    model = get_model("mlp", 1)
    params = init_params(model, (8, 8), seed=0)
    t0 = time.perf_counter()
    K = ntk_info.exact_ntk(model.apply_fn, params, X, progress=False)
    K_val = ntk_info.exact_ntk(model.apply_fn, params, X_val, X, progress=False)
    t_exact_kernel = time.perf_counter() - t0
    lam_max = float(np.linalg.eigvalsh(K[:, :, 0, 0])[-1])
    lr = args.lr_fraction * max_stable_lr(lam_max)
    settings = dict(lr=lr, steps=args.steps, discrete=True)

    f0 = np.asarray(model.apply_fn(params, X))
    t0 = time.perf_counter()
    exact = ntk_info.leave_one_out(kernel=K, residuals=Y[:, None] - f0, cross_kernel=K_val, progress=False,
                                   **settings)
    t_exact_loo = time.perf_counter() - t0
    fsi_exact = ntk_info.fsi(exact)
    fit = np.asarray(exact.fitted_residuals).reshape(-1)
    print(f"digits 4 vs 9: n_train = {len(Y)}, n_val = {len(Y_val)}; MLP 1024 ReLU from scratch, float64")
    print(f"lambda_max(K) = {lam_max:.4g}, max_stable_lr = {max_stable_lr(lam_max):.4g}, "
          f"lr = {lr:.4g} ({args.lr_fraction} x), steps = {args.steps} discrete GD, sum loss, no weight decay")
    print(f"training fit of the linearized model: train MSE {np.mean(fit ** 2):.4g} "
          f"(at init {np.mean((Y - f0[:, 0]) ** 2):.4g}), train sign accuracy {np.mean(np.sign(Y - fit) == Y):.3f}")
    print(f"exact NTK {t_exact_kernel:.1f} s + exact LOO {t_exact_loo:.1f} s")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    summary = {}
    for method in args.methods.split(","):
        for seed in seeds:
            res = ntk_info.score(model.apply_fn, params, X, Y, X_val, coords_per_layer=args.coords, seed=seed,
                                 method=method, trust_samples=0, progress=False, **settings)
            phi_err = ntk_info.kernel_relative_error(res.projection.features(X, progress=False).phi, K)
            pearson, spearman = pearsonr(res.fsi, fsi_exact)[0], spearmanr(res.fsi, fsi_exact)[0]
            summary.setdefault(method, []).append((pearson, spearman, phi_err))
            print(f"{method:>11}, seed {seed}, {args.coords}/leaf (p = {res.settings['p']}): kernel error "
                  f"||PhiPhi^T - K||_F/||K||_F = {phi_err:.4f}; F-SI vs exact: Pearson {pearson:.4f}, Spearman "
                  f"{spearman:.4f}, relative L2 difference "
                  f"{np.linalg.norm(res.fsi - fsi_exact) / np.linalg.norm(fsi_exact):.4f}; "
                  f"score() {res.settings['seconds_total']:.1f} s", flush=True)
    if len(seeds) > 1:
        print(f"over seeds {args.seeds}: Pearson mean / min, Spearman mean / min, kernel error mean / max")
        for method, rows in summary.items():
            p, s, e = np.array(rows).T
            print(f"{method:>11}: Pearson {p.mean():.4f} / {p.min():.4f}, Spearman {s.mean():.4f} / {s.min():.4f}, "
                  f"kernel error {e.mean():.4f} / {e.max():.4f}")


if __name__ == "__main__":
    main()
