"""The trust check (``ntk_info.trust``) on segmented scores: Table-1 CNN from scratch, S = 1 vs S = 16 (issue 12).

``score(..., linearize="segments", segments=S, trust_samples=m)`` retrains the real network without m
samples at evenly spaced ranks of the segmented F-SI and reports the verdict and its figures. Setup
as ``experiments/table1.py`` (40 training images, 181 validation, η = 0.25/λmax(K0), t = 150, λ = 0).

    nice -n 10 .venv/bin/python experiments/segments_trust.py --segments 1,16 --samples 4
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from segments_tracking import setup  # noqa: E402
from table1 import load_4v9  # noqa: E402
from ntk_info.scorer import score  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="cnn_scratch", help="cnn_scratch or mlp (table1.py's settings, λ = 0)")
    ap.add_argument("--segments", default="1,16", help="comma-separated S")
    ap.add_argument("--samples", type=int, default=4, help="trust-check retrainings m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/segments_trust")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model, p0, X, Y, X_val, lr, steps, _ = setup(args.network, args.seed, 40, 0.25)
    Y_val = load_4v9(args.seed)[0][3]
    out = {}
    for S in (int(s) for s in args.segments.split(",")):
        t0 = time.perf_counter()
        res = score(model.apply_fn, p0, X, np.asarray(Y, np.float64), X_val, Y_val=np.asarray(Y_val, np.float64),
                    lr=lr, steps=steps, discrete=True, linearize="segments", segments=S, trust_samples=args.samples,
                    seed=args.seed, progress=False)
        ev = res.trust
        spot = ev["spot_check"]
        line = {m: {k: spot[m][k] for k in spot[m] if k not in ("predicted", "actual")} for m in ("predictions", "weights")}
        print(f"S = {S}: verdict {ev['verdict'].upper()}; reasons {ev['reasons']}; spot check on {spot['samples']} "
              f"retrainings (samples {spot['indices']}): {json.dumps(line)}; linearization gap {ev['linearization_gap']:.3f}, "
              f"kernel drift {ev['kernel_drift']:.3f}, λmax ratio {ev['lambda_max_ratio']:.2f}, stability margin "
              f"{ev['stability_margin_init']:.3f} → {ev['stability_margin']:.3f}; {time.perf_counter() - t0:.0f} s "
              f"(shared, contended CPU)", flush=True)
        out[S] = ev
    with open(os.path.join(args.out, f"{args.network}.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
