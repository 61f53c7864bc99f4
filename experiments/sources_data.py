"""Write the .npz files of the sources experiments (issue 13): digits in sources of known quality.

    python experiments/sources_data.py OUT_DIR

planted.npz        1,200 training digits in two sources of 600: 'clean', and 'noisy' with 30 % of its
                   labels flipped (uniformly to another class); the other 597 digits (clean) are X_val/y_val.
digits_sources.npz 4 sources of 300: 'clean'; 'labels-20%' (20 % flipped); 'pixel-noise' (Gaussian
                   pixel noise σ = 0.3, clipped to [0, 1]); 'classes-0-4' (only digits 0-4); same X_val.
Then: ntk-info sources --data OUT_DIR/planted.npz --out results/sources_planted [--retrain]
"""
import os
import sys

import numpy as np
from sklearn.datasets import load_digits

from ntk_info.data import add_label_noise


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    d = load_digits()
    X, y = d.images / 16.0, d.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, val = order[:1200], order[1200:]
    labels = y[train].copy()
    labels[600:], _, _ = add_label_noise(labels[600:], 0.3, 10, seed=1)
    np.savez(os.path.join(out_dir, "planted.npz"), X=X[train], y=labels, source=np.repeat(["clean", "noisy"], 600),
             X_val=X[val], y_val=y[val])

    tail = order[900:]
    fourth = tail[y[tail] < 5][:300]  # the fourth source draws only digits 0-4
    picked = np.concatenate([order[:900], fourth])
    rest = tail[~np.isin(tail, fourth)]
    Xs, ys = X[picked].copy(), y[picked].copy()
    source = np.repeat(["clean", "labels-20%", "pixel-noise", "classes-0-4"], 300)
    ys[300:600], _, _ = add_label_noise(ys[300:600], 0.2, 10, seed=2)
    Xs[600:900] = np.clip(Xs[600:900] + 0.3 * rng.normal(size=Xs[600:900].shape), 0.0, 1.0)
    np.savez(os.path.join(out_dir, "digits_sources.npz"), X=Xs, y=ys, source=source, X_val=X[rest], y_val=y[rest])
    print(f"wrote {out_dir}/planted.npz (1200 train, {val.size} val) and {out_dir}/digits_sources.npz "
          f"(1200 train, {rest.size} val)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/sources_data")
