"""Check: the output-averaged ("trace") kernel against the full NTK and against retraining, 10 classes.

``ntk_info.score(kernel="auto")`` (and so the CLI) switches to the trace kernel K̄_ij = (1/k) Σ_a
⟨Φ_ia, Φ_ja⟩ when n·k > 4000 (``TRACE_ROWS_THRESHOLD``): the k outputs share one n×n kernel, and
removing a sample is a rank-1 instead of a rank-k update. Here both are computed on the same
problem: digits (10 classes, one-hot targets), the CLI's MLP and settings (``--n-train`` samples,
lr = 1/λ_max of the NTK at init, ``--steps`` full-batch GD steps, seed 0, 2000 countsketch
coordinates per layer), and compared

- with each other on every sample: Pearson / Spearman of F-SI and of SI (trace vs full);
- with retraining the real network without each of ``--subset`` samples (``ntk_info.brute``):
  Pearson / Spearman of predicted vs actual ||Δf(X_val)||² (F-SI) and ||Δw||² (SI).

Usage: ``python experiments/trace_kernel_check.py [--n-train 300] [--subset 40] [--steps 1000] [--width 256]``
(n·k = 3000 by default, so the full kernel is affordable; the CLI switches at 4000.)
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--subset", type=int, default=40, help="samples retrained without")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ntk_info
    from ntk_info.apps.pipeline import Pipeline, PipelineConfig, load_data
    from ntk_info.brute import brute_force_loo
    from ntk_info.comparison import correlations

    config = PipelineConfig(data="digits", n_train=args.n_train, width=args.width, steps=args.steps, seed=args.seed)
    data = load_data(config)
    pipe = Pipeline(config, data, progress=False)
    print(f"digits, n = {args.n_train}, k = 10 (n·k = {10 * args.n_train}), MLP width {args.width}, "
          f"lr = {pipe.lr:.4g} (1/λ_max), steps = {args.steps}, validation m = {data.X_val.shape[0]}")
    results, seconds = {}, {}
    for kernel in ("full", "trace"):
        start = time.perf_counter()
        results[kernel] = ntk_info.score(pipe.model.apply_fn, pipe.params0, pipe.X, pipe.Y, data.X_val, lr=pipe.lr,
                                         steps=args.steps, discrete=True, seed=args.seed, kernel=kernel,
                                         progress=False)
        seconds[kernel] = time.perf_counter() - start
    subset = np.sort(np.random.default_rng(args.seed).choice(args.n_train, size=args.subset, replace=False))
    start = time.perf_counter()
    brute = brute_force_loo(pipe.model.apply_fn, pipe.params0, pipe.X, pipe.Y, lr=pipe.lr, steps=args.steps,
                            subset=subset, X_val=data.X_val, chunk_size=1, seed=args.seed, progress=False)
    seconds["retraining"] = time.perf_counter() - start

    full, trace = results["full"], results["trace"]
    print("\ntrace vs full kernel, all samples:")
    for name, a, b in (("F-SI", trace.fsi, full.fsi), ("SI", trace.si, full.si)):
        p, s = correlations(a, b)
        print(f"  {name:5s} Pearson {p:.4f}  Spearman {s:.4f}  median ratio trace/full {np.median(a / b):.3f}")
    print(f"\nagainst retraining the network without each of {args.subset} samples:")
    print(f"  {'kernel':6s} {'F-SI Pearson':>13s} {'F-SI Spearman':>14s} {'SI Pearson':>11s} {'SI Spearman':>12s}")
    for kernel, res in results.items():
        pf, sf = correlations(res.prediction_change_sq[subset], brute.prediction_change_sq)
        pw, sw = correlations(res.weight_change_sq[subset], brute.weight_change_sq)
        print(f"  {kernel:6s} {pf:13.4f} {sf:14.4f} {pw:11.4f} {sw:12.4f}")
    print("\nseconds (contended 2-core machine; compare side by side): "
          + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
