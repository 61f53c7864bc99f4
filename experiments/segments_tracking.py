"""Where along training does the segmented LOO perturbation stop tracking retraining? (issue 12)

For a few left-out samples i of a Table-1 network (``experiments/table1.py``'s data, η, t, λ = 0),
the real network is retrained without i by the same full-batch GD from the same w0, and its
checkpoints w_s^{(-i)} are compared with the segmented prediction δ_s(i) of ``ntk_info.segments``
(recursion (1) there) at every checkpoint τ_s:

  weights      cos and relative error of δ_s(i) against d_s(i) = Pᵀ(w_s - w_s^{(-i)}) (the real
               difference in the same sketched coordinates, ``segments.sketch_weights``);
  local        the same for ONE segment propagated from the real d_{s-1}(i) (instead of the
               segmented δ_{s-1}(i)): the error of a single linearized segment, without the
               accumulated error of the earlier ones (stepped directly, float64);
  predictions  cos and relative error of Φ_s(X_v) δ_s(i) against f(X_v; w_s) - f(X_v; w_s^{(-i)});
  stability    η λmax(Φ_sᵀΦ_s)/2 at the segment's start and the number of modes with η u ≥ 2
               (a linear segment amplifies them by |1 - ηu|^{t_s}); the share of the real d_S(i)
               in those modes at the end; and cos(d_t, d_{t-1}) between the real differences one
               step apart (a truth that flips from one step to the next cannot be tracked by any
               smooth estimate).

Two candidate fixes for modes with η u ≥ 2 are carried along in closed form (dual eigendecompositions,
``segment_closed_form``; "plain" reproduces the library to ~1e-12): "equilibrate" (such a mode at its
equilibrium, g = 1/u, ψ = 0) and "marginal" (per-step factor clamped to -1); their cos against the
real difference per checkpoint and their final Pearson over the samples are printed. On the CNN from
scratch neither tracks (issue 12's closing note), so neither is in the library.

Rows are medians over the samples. Run (λ = 0 only):

    nice -n 10 .venv/bin/python experiments/segments_tracking.py --network cnn_scratch --samples 4 --segments 16
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from table1 import as_f32, load_4v9, ntk_lambda_max, upsample  # noqa: E402
from ntk_info.features import projected_features  # noqa: E402
from ntk_info.models import cnn, init_params, mlp  # noqa: E402
from ntk_info.segments import checkpoint_steps, segmented_network_loo, sketch_weights, train_checkpoints  # noqa: E402


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def rel_err(est, ref):
    return float(np.linalg.norm(np.ravel(est) - np.ravel(ref)) / (np.linalg.norm(ref) + 1e-300))


def one_segment(phi, r, i, delta0, *, lr, steps):
    """δ after ``steps`` GD steps of the model linearized with features ``phi`` (n, p), residuals r (n,),
    λ = 0, from δ0: δ ← δ - η[Φ_{-i}ᵀΦ_{-i} δ - φ_iᵀ e_i(τ)], e_i(τ) = r_i - φ_i u_τ, u the full run from 0."""
    u = np.zeros(phi.shape[1])
    delta = delta0.copy()
    keep = np.ones(phi.shape[0], bool)
    keep[i] = False
    phi_k = phi[keep]
    for _ in range(steps):
        e_i = r[i] - phi[i] @ u
        delta = delta - lr * (phi_k.T @ (phi_k @ delta) - phi[i] * e_i)
        u = u - lr * (phi.T @ (phi @ u - r))
    return delta


VARIANTS = ("plain", "equilibrate", "marginal")


def filter_dual(kappa, *, lr, steps, variant):
    """g(κ) = (1 - (1 - ηκ)^t)/κ (η t at κ = 0) on the dual spectrum; for modes with ηκ ≥ 2 (unstable under GD)
    "plain" keeps it, "equilibrate" uses 1/κ (the mode at its equilibrium, transition ψ = 1 - κg = 0),
    "marginal" clamps the per-step factor 1 - ηκ to -1 (ψ = (-1)^t, the edge of stability held)."""
    kappa = np.maximum(kappa, 0.0)
    base = 1.0 - lr * kappa
    unstable = lr * kappa >= 2.0
    if variant == "marginal":
        base = np.where(unstable, -1.0, base)
    safe = np.where(kappa > 0, kappa, 1.0)
    g = np.where(kappa > 0, (1.0 - base ** steps) / safe, lr * steps)
    if variant == "equilibrate":
        g = np.where(unstable, 1.0 / safe, g)
    return g


def segment_closed_form(phi, r, i, delta, *, lr, steps, variant):
    """Recursion (1) for one segment and sample, λ = 0, through dual eigendecompositions (n small):
    g(M)Φᵀr = Φᵀ g(K) r and ψ(M_{-i})δ = δ - Φ_{-i}ᵀ g(K_{-i}) Φ_{-i} δ (ψ = 1 - u g), g from ``filter_dual``."""
    keep = np.ones(phi.shape[0], bool)
    keep[i] = False
    out = []
    for rows in (np.ones_like(keep), keep):
        kappa, V = np.linalg.eigh(phi[rows] @ phi[rows].T)
        out.append((V, filter_dual(kappa, lr=lr, steps=steps, variant=variant)))
    (V, g), (Vk, gk) = out
    phik = phi[keep]
    drive = phi.T @ (V @ (g * (V.T @ r))) - phik.T @ (Vk @ (gk * (Vk.T @ r[keep])))
    return delta - phik.T @ (Vk @ (gk * (Vk.T @ (phik @ delta)))) + drive


def setup(network, seed, cnn_train, lr_factor):
    """(model, params0, X, Y, X_val, lr, steps, λmax(K0)) exactly as table1.py builds them (CNNs: its 40-sample subset)."""
    (X, Y, X_val, Y_val), _ = load_4v9(seed)
    if network == "mlp":
        model = mlp(num_outputs=1, width=1024)
        p0 = as_f32(init_params(model, (8, 8, 1), seed))
        lmax = ntk_lambda_max(model.apply_fn, p0, X, seed)
        return model, p0, X, Y, X_val, min(0.001, lr_factor / lmax), 2000, lmax
    if network != "cnn_scratch":
        raise ValueError(f"--network: expected mlp or cnn_scratch, got {network!r}")
    idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=min(cnn_train, X.shape[0]), replace=False))
    model = cnn(num_outputs=1)
    Xc, Xv = upsample(X[idx]), upsample(X_val)
    p0 = as_f32(init_params(model, (28, 28, 1), seed))
    lmax = ntk_lambda_max(model.apply_fn, p0, Xc, seed)
    return model, p0, Xc, Y[idx], Xv, lr_factor / lmax, 150, lmax


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="cnn_scratch", help="cnn_scratch or mlp (table1.py's settings, λ = 0)")
    ap.add_argument("--samples", type=int, default=8,
                    help="left-out samples retrained with checkpoints (drawn as compare() draws its brute-force subset, "
                         "so the default 8 are table1.py's CNN removals)")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--spacing", default="uniform")
    ap.add_argument("--steps", type=int, default=None, help="GD steps (default: table1's, 150 CNN / 2000 MLP)")
    ap.add_argument("--cnn-train", type=int, default=40)
    ap.add_argument("--n-val", type=int, default=40, help="validation inputs for the per-checkpoint prediction columns "
                                                           "(the final Pearson uses all of them, as table1.py)")
    ap.add_argument("--lr-factor", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/segments_tracking")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    model, p0, X, Y, Xv_all, lr, steps, lmax0 = setup(args.network, args.seed, args.cnn_train, args.lr_factor)
    Xv = Xv_all[:args.n_val]
    steps = args.steps or steps
    n = X.shape[0]
    tau = checkpoint_steps(steps, args.segments, args.spacing)
    samples = np.sort(np.random.default_rng(args.seed).choice(n, size=args.samples, replace=False))
    print(f"{args.network}: n={n}, η={lr:.4g} (η λmax(K0) = {lr * lmax0:.3f}), t={steps}, S={args.segments} "
          f"({args.spacing}: {tau.tolist()}), samples {samples.tolist()}", flush=True)

    feats0 = projected_features(model.apply_fn, p0, X, coords_per_layer=2000, seed=args.seed, progress=False)
    projection = feats0.projection
    seg_delta, seg_phi, seg_res = {}, {}, {}

    def on_segment(s, segment, delta):
        seg_delta[s + 1] = delta[samples, :, 0]
        seg_phi[s] = np.asarray(segment.features, np.float64).reshape(n, -1)
        seg_res[s] = np.asarray(segment.residuals, np.float64).reshape(n)

    t0 = time.perf_counter()
    _, info = segmented_network_loo(model.apply_fn, p0, X, Y, projection=projection, lr=lr, steps=steps,
                                    segments=args.segments, spacing=args.spacing, first_features=feats0,
                                    progress=False, on_segment=on_segment)
    t_seg = time.perf_counter() - t0
    weights = info["weights"]
    # the full run one step before the end (for the step-to-step stability of the truth)
    w_prev = train_checkpoints(model.apply_fn, p0, X, Y, lr=lr, checkpoints=np.array([0, steps - 1]))[-1]

    t0 = time.perf_counter()
    real = {}  # i -> list of checkpoint weights of the run without i, plus the one at t - 1
    for i in samples:
        keep = np.delete(np.arange(n), i)
        ws = train_checkpoints(model.apply_fn, p0, X[keep], Y[keep], lr=lr, checkpoints=np.append(tau[:-1], [steps - 1, steps]))
        real[int(i)] = ws[:-2] + [ws[-1]], ws[-2]
    t_real = time.perf_counter() - t0

    def diff(a, b):
        return jax.tree_util.tree_map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)

    rows = []
    d_prev = {int(i): np.zeros(seg_phi[0].shape[1]) for i in samples}
    var_delta = {v: {int(i): np.zeros(seg_phi[0].shape[1]) for i in samples} for v in VARIANTS}
    plain_check = 0.0
    for s in range(1, len(tau)):
        phi_prev, r_prev = seg_phi[s - 1], seg_res[s - 1]
        t_s = int(tau[s] - tau[s - 1])
        eig = np.linalg.eigvalsh(phi_prev @ phi_prev.T)
        margin = lr * eig[-1] / 2.0
        unstable = int(np.sum(lr * eig >= 2.0))
        feats_v = dataclasses.replace(projection, params=weights[s]).features(Xv, progress=False)
        phi_v = np.asarray(feats_v.phi, np.float64).reshape(Xv.shape[0], -1)
        f_v = np.asarray(model.apply_fn(weights[s], Xv), np.float64).ravel()
        cols = {k: [] for k in ("norm_real", "ratio", "cos_w", "err_w", "cos_local", "err_local", "cos_f", "err_f")
                + tuple(f"cos_w_{v}" for v in VARIANTS[1:])}
        for j, i in enumerate(samples):
            i = int(i)
            w_real = real[i][0][s]
            d_real = sketch_weights(projection, diff(weights[s], w_real)).astype(np.float64)
            delta = seg_delta[s][j]
            for v in VARIANTS:
                var_delta[v][i] = segment_closed_form(phi_prev, r_prev, i, var_delta[v][i], lr=lr, steps=t_s, variant=v)
            plain_check = max(plain_check, rel_err(var_delta["plain"][i], delta))
            local = one_segment(phi_prev, r_prev, i, d_prev[i], lr=lr, steps=t_s)
            df_real = f_v - np.asarray(model.apply_fn(w_real, Xv), np.float64).ravel()
            cols["norm_real"].append(np.linalg.norm(d_real))
            cols["ratio"].append(np.linalg.norm(delta) / np.linalg.norm(d_real))
            cols["cos_w"].append(cosine(delta, d_real))
            cols["err_w"].append(rel_err(delta, d_real))
            cols["cos_local"].append(cosine(local, d_real))
            cols["err_local"].append(rel_err(local, d_real))
            cols["cos_f"].append(cosine(phi_v @ delta, df_real))
            cols["err_f"].append(rel_err(phi_v @ delta, df_real))
            for v in VARIANTS[1:]:
                cols[f"cos_w_{v}"].append(cosine(var_delta[v][i], d_real))
            d_prev[i] = d_real
        row = dict(step=int(tau[s]), margin=float(margin), unstable=unstable,
                   **{k: float(np.median(v)) for k, v in cols.items()})
        rows.append(row)
        print(f"τ={row['step']:4d}  ηλmax/2={row['margin']:.3f}  ηu≥2: {unstable}  ||d_real||={row['norm_real']:.3g}  "
              f"||δ||/||d||={row['ratio']:.3g}  cos_w={row['cos_w']:+.3f} err_w={row['err_w']:.3g}  "
              f"local cos={row['cos_local']:+.3f} err={row['err_local']:.3g}  cos_f={row['cos_f']:+.3f} "
              f"err_f={row['err_f']:.3g}  | cos_w equilibrate {row['cos_w_equilibrate']:+.3f} "
              f"marginal {row['cos_w_marginal']:+.3f}", flush=True)
    print(f"check: the closed form 'plain' reproduces the library's δ_s to relative {plain_check:.2e}")

    # Pearson over the tracked samples at the end, as table1.py measures it (weights: full weight space;
    # predictions: all validation inputs, read out with the last segment's features)
    phi_v_last = np.asarray(dataclasses.replace(projection, params=weights[-2]).features(Xv_all, progress=False).phi,
                            np.float64).reshape(Xv_all.shape[0], -1)
    f_all = np.asarray(model.apply_fn(weights[-1], Xv_all), np.float64).ravel()
    truth_w = np.array([sum(float(np.sum(a ** 2)) for a in jax.tree_util.tree_leaves(diff(weights[-1], real[int(i)][0][-1])))
                        for i in samples])
    truth_f = np.array([float(np.sum((f_all - np.asarray(model.apply_fn(real[int(i)][0][-1], Xv_all), np.float64).ravel()) ** 2))
                        for i in samples])
    pearson = {}
    for v in VARIANTS:
        est_w = np.array([np.sum(var_delta[v][int(i)] ** 2) for i in samples])
        est_f = np.array([np.sum((phi_v_last @ var_delta[v][int(i)]) ** 2) for i in samples])
        pearson[v] = dict(weights=float(np.corrcoef(est_w, truth_w)[0, 1]),
                          predictions=float(np.corrcoef(est_f, truth_f)[0, 1]))
        print(f"Pearson with retraining over the {len(samples)} samples, {v:11s}: weights {pearson[v]['weights']:+.3f}, "
              f"predictions {pearson[v]['predictions']:+.3f}")

    # the end: share of the real difference in the unstable modes at w_t; step-to-step stability of the truth
    feats_end = dataclasses.replace(projection, params=weights[-1]).features(X, progress=False)
    phi_end = np.asarray(feats_end.phi, np.float64).reshape(n, -1)
    eig_end, V = np.linalg.eigh(phi_end @ phi_end.T)
    top = lr * eig_end >= 1.9
    U_top = phi_end.T @ (V[:, top] / np.sqrt(eig_end[top]))  # orthonormal directions of the top modes
    end = []
    for j, i in enumerate(samples):
        i = int(i)
        d_real = sketch_weights(projection, diff(weights[-1], real[i][0][-1])).astype(np.float64)
        d_before = sketch_weights(projection, diff(w_prev, real[i][1])).astype(np.float64)
        delta = seg_delta[len(tau) - 1][j]
        end.append(dict(sample=i, share_top_real=float(np.sum((U_top.T @ d_real) ** 2) / np.sum(d_real ** 2)),
                        share_top_segmented=float(np.sum((U_top.T @ delta) ** 2) / np.sum(delta ** 2)),
                        cos_truth_t_vs_t_minus_1=cosine(d_real, d_before),
                        norm_ratio_t_vs_t_minus_1=float(np.linalg.norm(d_real) / np.linalg.norm(d_before))))
    print(f"end of training: modes with η u ≥ 1.9 at w_t: {int(top.sum())} (η λmax/2 = {lr * eig_end[-1] / 2:.3f})")
    for e in end:
        print(f"  sample {e['sample']:3d}: share of real ||d_t||² in those modes {e['share_top_real']:.3f} "
              f"(segmented δ_S: {e['share_top_segmented']:.3f}); real d_t vs d_(t-1): cos {e['cos_truth_t_vs_t_minus_1']:+.3f}, "
              f"norm ratio {e['norm_ratio_t_vs_t_minus_1']:.3f}")
    total = time.perf_counter() - t_start
    print(f"seconds: segmented LOO (incl. its training) {t_seg:.1f}, {len(samples)} retrainings with checkpoints "
          f"{t_real:.1f}, total {total:.1f} (shared, contended CPU)")
    with open(os.path.join(args.out, f"{args.network}_S{args.segments}_{args.spacing}.json"), "w") as f:
        json.dump(dict(args=vars(args), lr=lr, steps=steps, checkpoints=tau.tolist(), samples=samples.tolist(),
                       rows=rows, end=end, pearson=pearson, plain_check=plain_check, truth_weights=truth_w.tolist(),
                       truth_predictions=truth_f.tolist(),
                       seconds=dict(segments=t_seg, retraining=t_real, total=total)), f, indent=1)


if __name__ == "__main__":
    main()
