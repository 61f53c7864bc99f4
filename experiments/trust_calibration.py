"""Calibration of ``ntk_info.trust``'s verdict on the SI paper's Table-1 cases (digits 4 vs 9).

The three networks and settings of ``experiments/table1.py`` (λ = 0 rows): the MLP (1024 ReLUs) from
scratch at the paper's η = 0.001, t = 2000 on 180 training samples; the paper's CNN on 28×28
upsampled digits from scratch and pretrained on the other eight digits (fresh 1-output head), both
at η = 0.25/λ_max(K0), t = 150, on 40 training samples. Each is scored with ``ntk_info.score``
(discrete GD, the default CountSketch projection) and checked with ``ntk_info.trust`` — one real
training run plus ``--samples`` retrainings (fewer removals than table1's 30 for the MLP, same 8 for
the CNNs). Float32 as in table1. Prints every figure behind the verdict, one row per network.

    .venv/bin/python experiments/trust_calibration.py [--out results/trust_calibration]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table1 import as_f32, load_4v9, ntk_lambda_max, upsample  # noqa: E402

import ntk_info  # noqa: E402
from ntk_info.models import cnn, init_params, mlp  # noqa: E402
from ntk_info.training import pretrain_then_finetune  # noqa: E402


def case(name, model, params0, X, Y, X_val, Y_val, *, lr, steps, samples, seed):
    t0 = time.perf_counter()
    res = ntk_info.score(model.apply_fn, params0, X, Y, X_val, lr=lr, steps=steps, discrete=True, seed=seed,
                         trust_samples=samples, Y_val=Y_val, progress=False)
    tr = res.trust
    spot = tr["spot_check"]
    row = {"network": name, "n": X.shape[0], "lr": lr, "steps": steps, "verdict": tr["verdict"],
           "gap": tr["linearization_gap"], "drift": tr["kernel_drift"], "lmax_ratio": tr["lambda_max_ratio"],
           "margin_init": tr["stability_margin_init"], "margin": tr["stability_margin"],
           "r_fsi": spot["predictions"]["pearson"], "r_fsi_ci": spot["predictions"]["pearson_interval"],
           "rho_fsi": spot["predictions"]["spearman"], "r_w": spot["weights"]["pearson"],
           "r_w_ci": spot["weights"]["pearson_interval"], "rho_w": spot["weights"]["spearman"],
           "acc": tr["accuracy"], "trust_s": tr["seconds"]["total"], "total_s": time.perf_counter() - t0}
    print(f"[{name}] {row['verdict'].upper()}  gap {row['gap']:.3f}  drift {row['drift']:.3f}  "
          f"λmax ratio {row['lmax_ratio']:.2f}  margin {row['margin_init']:.2f} -> {row['margin']:.2f}  "
          f"Pearson F-SI {_r(row['r_fsi'], row['r_fsi_ci'])} (Spearman {_f(row['rho_fsi'])})  "
          f"Pearson SI {_r(row['r_w'], row['r_w_ci'])} (Spearman {_f(row['rho_w'])})", flush=True)
    print(f"    accuracy real {tr['accuracy']['real']}  linearized {tr['accuracy']['linearized']}", flush=True)
    print("    reasons: " + "; ".join(tr["reasons"]), flush=True)
    print("    advice: " + "; ".join(tr["advice"]), flush=True)
    print(f"    seconds: {json.dumps({k: round(v, 1) for k, v in tr['seconds'].items()})}, score+trust "
          f"{row['total_s']:.1f}", flush=True)
    return row, tr


def _f(v):
    return "n/a" if v is None else f"{v:.3f}"


def _r(v, ci):
    return _f(v) + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="directory for trust_calibration.json (optional)")
    ap.add_argument("--networks", default="mlp,cnn_scratch,cnn_pretrained")
    ap.add_argument("--mlp-samples", type=int, default=12, help="spot-check retrainings for the MLP")
    ap.add_argument("--cnn-samples", type=int, default=8, help="spot-check retrainings for the CNNs")
    ap.add_argument("--cnn-train", type=int, default=40, help="training samples for the CNNs (table1: 40)")
    ap.add_argument("--cnn-steps", type=int, default=150, help="t for the CNNs (table1: 150)")
    ap.add_argument("--pretrain-steps", type=int, default=100, help="SGD steps of pretraining (table1: 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    (X, Y, X_val, Y_val), (X_pre, Y_pre) = load_4v9(args.seed)
    rows, details = [], {}
    cnn_idx = np.sort(np.random.default_rng(args.seed).choice(X.shape[0], args.cnn_train, replace=False))
    Xc, Xc_val = upsample(X[cnn_idx]), upsample(X_val)
    for net in [s.strip() for s in args.networks.split(",") if s.strip()]:
        if net == "mlp":
            model = mlp(num_outputs=1, width=1024)
            p0 = as_f32(init_params(model, (8, 8, 1), args.seed))
            row, tr = case("MLP scratch", model, p0, X, Y, X_val, Y_val, lr=0.001, steps=2000,
                           samples=args.mlp_samples, seed=args.seed)
        elif net in ("cnn_scratch", "cnn_pretrained"):
            model = cnn(num_outputs=1)
            if net == "cnn_scratch":
                p0 = as_f32(init_params(model, (28, 28, 1), args.seed))
            else:  # table1's pretraining: SGD b=64 on the other digits, lr 0.25/λ_max of the full-data kernel
                pre_model = cnn(num_outputs=8)
                Xp = upsample(X_pre)
                sub = np.random.default_rng(args.seed).choice(Xp.shape[0], 128, replace=False)
                p_init = as_f32(init_params(pre_model, (28, 28, 1), args.seed))
                lr_pre = 0.25 / (ntk_lambda_max(pre_model.apply_fn, p_init, Xp[sub], args.seed) * Xp.shape[0] / 128)
                p0 = as_f32(pretrain_then_finetune(pre_model, model, Xp, Y_pre, lr=lr_pre, steps=args.pretrain_steps,
                                                   batch_size=64, seed=args.seed))
            lr = 0.25 / ntk_lambda_max(model.apply_fn, p0, Xc, args.seed)
            row, tr = case("CNN " + net.split("_")[1], model, p0, Xc, Y[cnn_idx], Xc_val, Y_val, lr=lr,
                           steps=args.cnn_steps, samples=args.cnn_samples, seed=args.seed)
        else:
            raise ValueError(f"--networks: unknown {net!r}; valid: mlp, cnn_scratch, cnn_pretrained")
        rows.append(row)
        details[row["network"]] = tr
    print("\n| network | verdict | gap | drift | λmax ratio | margin | Pearson F-SI [95% CI] | Pearson SI [95% CI] |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['verdict']} | {r['gap']:.3f} | {r['drift']:.3f} | {r['lmax_ratio']:.2f} | "
              f"{r['margin']:.2f} | {_r(r['r_fsi'], r['r_fsi_ci'])} | {_r(r['r_w'], r['r_w_ci'])} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "trust_calibration.json"), "w") as handle:
            json.dump(details, handle, indent=1)


if __name__ == "__main__":
    main()
