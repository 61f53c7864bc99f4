"""A self-contained HTML report of a results folder: figures (embedded PNGs), tables and the settings used.

A results folder holds what the CLI's subcommands write (each file optional):

    settings.json      settings of the run, warnings, per-stage timings, and under "trust" the evidence of
                       ``ntk_info.trust`` (drawn as a green/amber/red box at the top of the report)
    scores.csv         one row per training sample: index (position in this run), row (0-based row in the
                       user's data), label (as the user wrote it), label_code (the class index the model
                       used), [true_label, is_noisy, is_adversarial, source, group], then one column per
                       score (fsi, si, loo_residual, ...)
    split.csv          row, array (X or X_val), split (train / validation / test) of every sample used
    detection.csv      method, auroc, ap, found_top10, found_top20 (and the ``bad`` column they used)
    clean.csv          the samples detection flagged: index, row, label, flagged, action (remove/relabel),
                       new_label; settings.json's "clean" has the test accuracy before/after cleaning and
                       "summarize_on" the cleaned training set that summarize.csv is about
    summarize.csv      strategy, fraction, n_kept, accuracy
    sources.csv        per-source/group summaries (by, group, count, mean, median, quantiles)
    compare.csv        the method-comparison table (ntk_info.compare)
    inputs.npz         training inputs X and image_shape, when inputs are images (for sample grids)
    manifest.json      every file the run wrote, with its size and SHA-256 (written last)

:func:`check_results` refuses an unfinished, truncated or modified folder with one line naming the file.

:func:`build_report` draws histograms of scores (clean vs noisy, by source or group), grids of the
most and least informative images, ROC curves, summarization curves, and writes ``report.html``
plus every figure as ``figures/<name>.png``. matplotlib runs with the Agg backend.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os

import numpy as np

__all__ = ["build_report", "check_results", "trust_box", "write_csv", "read_csv", "SCORE_LABELS", "MANIFEST",
           "INCOMPLETE_MARKER"]

MANIFEST = "manifest.json"
INCOMPLETE_MARKER = "INCOMPLETE-run-in-progress-or-interrupted.txt"
RESULT_CSVS = ("scores.csv", "split.csv", "detection.csv", "clean.csv", "summarize.csv", "sources.csv", "compare.csv")

SCORE_LABELS = {
    "fsi": "F-SI (functional sample information)",
    "si": "SI (weights, isotropic)",
    "si_langevin": "SI (weights, SGD/Langevin)",
    "loo_residual": "exact LOO residual ||Y_i - f_-i(x_i)||",
    "crossfit": "LOO log-prob., cross-fitted point (-)",
    "pooled": "LOO log-prob., pooled: trained, trained-head, cross-fitted (-)",
    "influence": "influence self-score",
    "mpe": "MPE sensitivity (logit space)",
    "train_loss": "training loss",
    "cleanlab": "cleanlab (1 - label quality)",
}
_META = ("index", "row", "label", "label_code", "true_label", "is_noisy", "is_adversarial", "source", "group")


def write_csv(path, rows: list[dict]) -> None:
    """Write dict rows (same keys) as CSV; floats with full precision."""
    if not rows:
        raise ValueError(f"{path}: nothing to write (no rows)")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path) -> list[dict]:
    """Rows of a CSV as dicts; numeric-looking values become floats."""
    def convert(v):
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="") as handle:
        return [{k: convert(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _check_csv(path):
    """A results CSV: a header, at least one data row, every row as long as the header, a final newline."""
    name = os.path.basename(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw and not raw.endswith(b"\n"):
        raise ValueError(f"{path}: the last line has no line end, so the file was cut mid-row (an interrupted "
                         "or damaged run); rerun the subcommand")
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable CSV ({err}); rerun the subcommand") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: {'empty' if not rows else 'header only, no data rows'}; {name} of a finished run "
                         "has one row per result; rerun the subcommand")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {len(rows[0])} (a cut or "
                             "damaged file); rerun the subcommand")


def _check_contents(out_dir, found):
    for name in RESULT_CSVS:
        if name in found:
            _check_csv(os.path.join(out_dir, name))
    if "settings.json" in found:
        path = os.path.join(out_dir, "settings.json")
        try:
            with open(path) as handle:
                settings = json.load(handle)
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); rerun the subcommand") from None
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: expected a JSON object of settings, got a {type(settings).__name__}")
        return settings
    return {}


def check_results(out_dir, *, require_manifest: bool = True) -> None:
    """Raise ValueError (one line, naming the file) unless ``out_dir`` holds a finished, unmodified run.

    Finished: no ``INCOMPLETE_MARKER``, a ``manifest.json`` (required with ``require_manifest``) whose
    every file exists with its recorded size and SHA-256; every results CSV has a header, data rows of
    the header's length and a final newline; ``settings.json`` is a JSON object.
    """
    import hashlib

    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir!r} is not a directory with results; run a subcommand first")
    found = set(os.listdir(out_dir))
    if INCOMPLETE_MARKER in found:
        raise ValueError(f"{os.path.join(out_dir, INCOMPLETE_MARKER)}: this run did not finish; rerun the subcommand")
    manifest_path = os.path.join(out_dir, MANIFEST)
    if MANIFEST not in found:
        if require_manifest:
            raise ValueError(f"{manifest_path}: missing, so {out_dir} is not a finished ntk-info run (interrupted, "
                             "or written by something else); rerun the subcommand")
    else:
        try:
            with open(manifest_path) as handle:
                files = json.load(handle)["files"]
            entries = [(rel, int(e["bytes"]), str(e["sha256"])) for rel, e in files.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{manifest_path}: unreadable ({type(err).__name__}: {err}); rerun the subcommand") \
                from None
        for rel, size, digest in entries:
            path = os.path.join(out_dir, rel)
            if not os.path.isfile(path):
                raise ValueError(f"{path}: listed in {MANIFEST} but missing (an interrupted or edited run); rerun the "
                                 "subcommand")
            if os.path.getsize(path) != size or hashlib.sha256(open(path, "rb").read()).hexdigest() != digest:
                raise ValueError(f"{path}: changed since the run wrote it ({os.path.getsize(path)} bytes, {MANIFEST} "
                                 f"says {size}); rerun the subcommand")
    _check_contents(out_dir, found)


def _columns(rows):
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_values(values):
    """log10 of non-negative scores (a floor at the smallest positive value keeps zeros visible)."""
    values = np.asarray(values, dtype=np.float64)
    positive = values[values > 0]
    if positive.size == 0 or (values < 0).any():
        return values, False
    return np.log10(np.maximum(values, positive.min())), True


def histogram_figure(values, split, title, score_name):
    """Overlaid density histograms of ``values`` for each distinct value of ``split`` (n,)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    data, logged = _log_values(values)
    bins = np.histogram_bin_edges(data, bins=40)
    for g in np.unique(split):
        sel = split == g
        ax.hist(data[sel], bins=bins, alpha=0.55, density=True, label=f"{g} (n={int(sel.sum())})")
    ax.set_xlabel(("log10 " if logged else "") + SCORE_LABELS.get(score_name, score_name))
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid_figure(images, image_shape, captions, title, columns=10):
    """A grid of images (m, H·W·C) with one caption each."""
    plt = _plt()
    m = len(images)
    rows = max(int(np.ceil(m / columns)), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.45 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), images, captions):
        img = np.asarray(img).reshape(image_shape)
        ax.imshow(img[..., 0] if image_shape[-1] == 1 else np.clip(img, 0, 1), cmap="gray")
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(scores: dict, is_bad, title):
    """ROC curves (sklearn.metrics.roc_curve) of every score against ``is_bad``: full range and a zoom on FPR <= 0.1."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(is_bad, s)
        for ax in axes:
            ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(is_bad, s):.3f})")
    axes[0].plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    axes[1].set_xlim(0, 0.1)
    axes[1].set_ylim(0.5, 1.01)
    for ax, sub in zip(axes, ("", " (zoom: FPR <= 0.1)")):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title + sub)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def summarization_figure(rows, title):
    """Test accuracy against the fraction of training samples removed, one line per strategy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    cols = _columns(rows)
    full = cols["strategy"] == "full data"
    for strategy in dict.fromkeys(cols["strategy"]):
        sel = cols["strategy"] == strategy
        if strategy != "full data":
            sel = sel | full  # every line starts at the full data's accuracy (0% removed)
        order = np.argsort(cols["fraction"][sel].astype(float), kind="stable")
        ax.plot(100 * cols["fraction"][sel].astype(float)[order], 100 * cols["accuracy"][sel].astype(float)[order],
                marker="o", label=strategy, **({"zorder": 3, "ls": "none"} if strategy == "full data" else {}))
    ax.set_xlabel("training samples removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- HTML


def _table(rows, digits=4):
    if not rows:
        return "<p>(empty)</p>"

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee}h2{border-bottom:1px solid #ddd;padding-bottom:3px}
.note{color:#555;font-size:14px}figure{margin:0.5em 0 1.5em}figcaption{font-size:13px;color:#555}
figure.half{display:inline-block;vertical-align:top;width:49%;margin-right:1%}
.findings{background:#f4f8fc;border:1px solid #c9dcef;padding:0.5em 1.2em;font-size:15px}
.trust{border:2px solid;border-radius:6px;padding:0.4em 1.2em;margin:0.5em 0 1.5em;font-size:14px}
.trust h2{border:none;margin:0.3em 0}.trust table{background:#fff}
.trust-trusted{background:#eaf6ec;border-color:#2e7d32}.trust-trusted h2{color:#2e7d32}
.trust-caution{background:#fff6e0;border-color:#e69b00}.trust-caution h2{color:#a86b00}
.trust-not-trusted{background:#fdecea;border-color:#c62828}.trust-not-trusted h2{color:#c62828}"""


_TRUST_HEADLINES = {
    "trusted": "Trusted: the scores hold for the real network",
    "caution": "Caution: the scores hold only approximately for the real network",
    "not trusted": "Not trusted: the real network does not behave like its linearization here",
}


_RANKED_BY = {"fsi": "F-SI", "si": "SI"}


def _num(value, digits=3):
    return "n/a" if value is None else f"{float(value):.{digits}g}"


def _correlation(entry):
    """'0.98 [0.91, 1.00]' for a spot-check measure (Pearson and its bootstrap interval), or 'n/a'."""
    if not entry or entry.get("pearson") is None:
        return "n/a"
    ci = entry.get("pearson_interval")
    text = f"{entry['pearson']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return text + (f", Spearman {entry['spearman']:.3f}" if entry.get("spearman") is not None else "")


def trust_box(trust: dict) -> str:
    """HTML of the verdict box: colour from trust["verdict"] (green trusted, amber caution, red not trusted;
    an unknown verdict is drawn amber), the reasons, the figures behind them (``ntk_info.trust``) and advice."""
    verdict = str(trust.get("verdict", "unknown"))
    css = {"trusted": "trust-trusted", "not trusted": "trust-not-trusted"}.get(verdict, "trust-caution")
    headline = _TRUST_HEADLINES.get(verdict, f"Trust verdict: {verdict}")
    spot = trust.get("spot_check") or {}
    rows = [
        ("spot check: retrained without", f"{spot.get('samples', 'n/a')} samples spread over the "
                                          f"{_RANKED_BY.get(spot.get('ranked_by'), 'score')} ranking"),
        ("Pearson, predicted vs retrained ||Δf(X_val)||² (95% CI)", _correlation(spot.get("predictions"))),
        ("Pearson, predicted vs retrained ||Δw||² (95% CI)", _correlation(spot.get("weights"))),
        (f"linearization gap ||f_lin − f|| / ||f − f0|| ({trust.get('gap_inputs', 'validation')})",
         _num(trust.get("linearization_gap"))),
        ("kernel drift ||K_trained − K_0|| / ||K_0||", _num(trust.get("kernel_drift"))),
        ("λ_max(trained) / λ_max(w0)", _num(trust.get("lambda_max_ratio"))),
        ("stability margin lr·(λ_max + λ)/2, w0 → trained (GD diverges at 1)",
         f"{_num(trust.get('stability_margin_init'))} → {_num(trust.get('stability_margin'))}"
         + (" — edge of stability" if trust.get("edge_of_stability") else "")),
    ]
    accuracy = trust.get("accuracy")
    if accuracy:
        for split in ("train", "val"):
            real, lin = accuracy["real"].get(split), accuracy["linearized"].get(split)
            if real is not None:
                rows.append((f"{split} accuracy, real / linearized network", f"{real:.3f} / {_num(lin)}"))
    seconds = trust.get("seconds") or {}
    if "total" in seconds:
        rows.append(("cost of this check (s)", f"{seconds['total']:.1f}"))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in trust.get("reasons", []))
    advice = "".join(f"<li>{html.escape(str(a))}</li>" for a in trust.get("advice", []))
    note = ("The scores are exact leave-one-out for the linearized network; these checks measure whether the "
            "trained network behaves like it (ntk_info.trust: one real training run plus the spot-check retrainings).")
    return (f"<div class='trust {css}'><h2>{html.escape(headline)}</h2><p class='note'>{note}</p><ul>{reasons}</ul>"
            f"<table><tbody>{table}</tbody></table>"
            + (f"<b>What to do</b><ul>{advice}</ul>" if advice else "") + "</div>")


class _Page:
    def __init__(self, out_dir):
        self.parts = []
        self.fig_dir = os.path.join(out_dir, "figures")
        os.makedirs(self.fig_dir, exist_ok=True)
        self.figures = []

    def heading(self, text):
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text):
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, rows):
        self.parts.append(_table(rows))

    def findings(self, lines):
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        self.parts.append(f"<div class='findings'><b>Key findings</b><ul>{items}</ul></div>")

    def figure(self, name, fig, caption, half=False):
        plt = _plt()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        png = buf.getvalue()
        path = os.path.join(self.fig_dir, f"{name}.png")
        with open(path, "wb") as handle:
            handle.write(png)
        self.figures.append(path)
        data = base64.b64encode(png).decode("ascii")
        css = " class='half'" if half else ""
        self.parts.append(f"<figure{css}><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _score_columns(cols):
    return [k for k in cols if k not in _META and k != "bad"]


def build_report(out_dir, title: str = "ntk_info report") -> str:
    """Render ``out_dir/report.html`` (and ``out_dir/figures/*.png``) from the files in ``out_dir``; return its path."""
    if not os.path.isdir(out_dir):
        raise ValueError(f"out_dir: {out_dir!r} is not a directory with results; run a subcommand first")
    found = {name for name in os.listdir(out_dir)}
    if not found & {"scores.csv", "detection.csv", "summarize.csv", "sources.csv", "compare.csv"}:
        raise ValueError(f"{out_dir}: no results to report (expected scores.csv, detection.csv, summarize.csv, "
                         "sources.csv or compare.csv)")
    page = _Page(out_dir)
    settings = _check_contents(out_dir, found)
    page.parts.append(f"<h1>{html.escape(title)}</h1>")
    if settings.get("trust"):
        page.parts.append(trust_box(settings["trust"]))
    if settings.get("warnings"):
        page.heading("Warnings")
        page.findings([str(w) for w in settings["warnings"]])
    findings = _key_findings(out_dir, found, settings)
    if findings:
        page.findings(findings)
    cols = {}
    if "scores.csv" in found:
        cols = _columns(read_csv(os.path.join(out_dir, "scores.csv")))
        _scores_section(page, out_dir, cols, settings)
    if "detection.csv" in found:
        _detection_section(page, out_dir, cols)
    if "clean" in settings:
        _clean_section(page, out_dir, found, settings["clean"], cols, settings)
    if "summarize.csv" in found:
        rows = read_csv(os.path.join(out_dir, "summarize.csv"))
        on = settings.get("summarize_on")
        page.heading("Dataset summarization" + (" of the cleaned data" if on else ""))
        if on:
            wrong = on.get("wrong_labels")
            page.text(f"Summarization runs on the cleaned training set ({on['training_set']}): {on['n_train']} "
                      f"samples{'' if wrong is None else f' with {wrong} wrong labels left'}, scored again on that "
                      "set alone.")
        page.text("Test accuracy of the network retrained on what is left after removing a fraction of the training "
                  "set: the least informative samples (bottom, once or iteratively in 5% steps with recomputed "
                  "scores), the most informative (top), or random ones (SI paper Fig. 2c).")
        if not on and "is_noisy" in cols and np.any(cols["is_noisy"].astype(float) > 0):
            page.text("With label noise, the mislabeled samples are among the most informative (see the detection "
                      "section), so keeping only the top-scored samples at large removal fractions keeps mostly "
                      "wrong labels: clean the flagged samples first (--clean), then summarize.")
        page.figure("summarization", summarization_figure(rows, "Summarization" + (" (cleaned data)" if on else "")),
                    "Accuracy vs. fraction removed.")
        page.table(_summarization_wide(rows))
    if "sources.csv" in found:
        _sources_section(page, read_csv(os.path.join(out_dir, "sources.csv")), cols)
    if "compare.csv" in found:
        page.heading("Method comparison against brute-force retraining")
        page.table(read_csv(os.path.join(out_dir, "compare.csv")))
    if settings:
        page.heading("Settings")
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in settings.items()
                if k not in ("timings", "trust")}
        page.table([{"setting": k, "value": v} for k, v in flat.items()])
        if settings.get("timings"):
            page.heading("Timings")
            timings = [{"stage": k, "seconds": float(v)} for k, v in settings["timings"].items()]
            page.table(timings + [{"stage": "total", "seconds": sum(r["seconds"] for r in timings)}])
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as handle:
        handle.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                     f"<style>{_CSS}</style></head><body>{''.join(page.parts)}</body></html>")
    return path


def _summarization_wide(rows):
    """Test accuracy (%) with one row per strategy and one column per removed fraction."""
    table = {}
    for r in rows:
        table.setdefault(r["strategy"], {"strategy": r["strategy"]})[f"{100 * float(r['fraction']):.0f}% removed"] = \
            100 * float(r["accuracy"])
    columns = sorted({c for t in table.values() for c in t if c != "strategy"}, key=lambda c: float(c.split("%")[0]))
    full = table.get("full data", {}).get("0% removed", "")
    return [{"strategy": name, **{c: t.get(c, full if c == "0% removed" else "") for c in columns}}
            for name, t in table.items()]


def _clean_line(clean):
    """One sentence: what cleaning flagged, what it did to the wrong labels and to test accuracy."""
    planted = "" if "flag_precision" not in clean else (
        f" ({100 * float(clean['flag_precision']):.0f}% of them wrong labels; wrong labels in the training set "
        f"{clean['wrong_labels_before']} → {clean['wrong_labels_after']})")
    verbs = {"remove": "removed", "relabel": "relabelled to the LOO-predicted class"}
    verb = verbs.get(clean["action"], clean["action"])
    return (f"Cleaning: {clean['n_flagged']} samples flagged ({clean['rule']}) and {verb}{planted}; test accuracy of "
            f"the retrained network {100 * float(clean['accuracy_before']):.1f}% → "
            f"{100 * float(clean['accuracy_after']):.1f}%.")


def _clean_section(page, out_dir, found, clean, cols, settings):
    page.heading("Cleaning")
    page.text(_clean_line(clean) + " The network is retrained from the same initialization (Adam, early stopping on "
              "the validation half) on the data as given and on the cleaned data; accuracy on the test half"
              + (f" ({settings['n_test']} samples: one sample is {100 / settings['n_test']:.2g} points)."
                 if settings.get("n_test") else "."))
    n = clean["n_kept"] + (clean["n_flagged"] if clean["action"] == "remove" else 0)
    summary = [{"": "training samples", "before cleaning": n, "after cleaning": clean["n_kept"]}]
    if "wrong_labels_before" in clean:
        summary.append({"": "wrong labels", "before cleaning": clean["wrong_labels_before"],
                        "after cleaning": clean["wrong_labels_after"]})
    summary.append({"": "test accuracy (%)", "before cleaning": 100 * float(clean["accuracy_before"]),
                    "after cleaning": 100 * float(clean["accuracy_after"])})
    page.table(summary)
    if "clean.csv" in found:
        rows = [r for r in read_csv(os.path.join(out_dir, "clean.csv")) if r.get("flagged") == 1]
        true = dict(zip(cols["index"].astype(int), cols["true_label"])) if {"index", "true_label"} <= set(cols) \
            else {}
        shown = []
        for r in rows[:12]:
            row = {"index": int(r["index"]), "row": int(r["row"]), "label": _label(r["label"])}
            if true:
                row["true label"] = _label(true.get(int(r["index"]), ""))
            row["action"] = r["action"]
            if clean["action"] == "relabel":
                row["new label"] = _label(r["new_label"])
            shown.append(row)
        if shown:
            page.text(f"The first {len(shown)} of the {len(rows)} flagged samples (all in clean.csv):")
            page.table(shown)


def _key_findings(out_dir, found, settings=None):
    """One-line conclusions from detection.csv, the cleaning and summarize.csv, for the top of the report."""
    lines = []
    if "detection.csv" in found:
        rows = read_csv(os.path.join(out_dir, "detection.csv"))
        best = max(rows, key=lambda r: float(r["auroc"]))
        line = (f"Best detector of {best.get('bad', 'bad')} samples: {best['method']} "
                f"(AUROC {float(best['auroc']):.3f}, "
                f"average precision {float(best['ap']):.3f}; inspecting its top 10% finds "
                f"{100 * float(best['found_top10']):.0f}% of them).")
        ours = [r for r in rows if r["method"] in ("fsi", "si", "loo_residual", "loo_margin", "loo_prob", "crossfit",
                                                   "pooled")]
        outside = {r["method"]: r for r in rows}.get("cleanlab")
        if ours and outside:
            top = max(ours, key=lambda r: float(r["auroc"]))
            line += (f" Best ntk_info score: {top['method']} (AUROC {float(top['auroc']):.3f}, "
                     f"AP {float(top['ap']):.3f})"
                     f" vs cleanlab (AUROC {float(outside['auroc']):.3f}, AP {float(outside['ap']):.3f}).")
        lines.append(line)
    if settings and "clean" in settings:
        lines.append(_clean_line(settings["clean"]))
    if "summarize.csv" in found:
        rows = read_csv(os.path.join(out_dir, "summarize.csv"))
        full = [float(r["accuracy"]) for r in rows if float(r["fraction"]) == 0]
        if full:
            for strategy in ("bottom", "bottom-iterative", "random"):
                kept = [float(r["fraction"]) for r in rows
                        if r["strategy"] == strategy and float(r["accuracy"]) >= full[0] - 0.01]
                if kept:
                    on = (settings or {}).get("summarize_on")
                    lines.append(f"Summarization{' of the cleaned data' if on else ''}, removing {strategy} samples: "
                                 f"up to {100 * max(kept):.0f}% of the "
                                 f"training set goes with test accuracy within 1 point of the full data "
                                 f"({100 * full[0]:.1f}%).")
    return lines


def _scores_section(page, out_dir, cols, settings):
    main = "fsi" if "fsi" in cols else _score_columns(cols)[0]
    page.heading("Scores")
    page.text(f"{len(cols[main])} training samples. F-SI: how much the predictions on the validation set would "
              "change without the sample; SI: how much the weights would (SI paper eq. 15, 5), computed in closed "
              "form on the linearized network.")
    values = cols[main].astype(float)
    splits = []
    if "is_noisy" in cols and len(np.unique(cols["is_noisy"])) > 1:
        splits.append(("noise", np.where(cols["is_noisy"].astype(float) > 0, "mislabeled", "clean")))
    if "is_adversarial" in cols and len(np.unique(cols["is_adversarial"])) > 1:
        splits.append(("adversarial", np.where(cols["is_adversarial"].astype(float) > 0, "adversarial", "clean")))
    for key in ("source", "group"):
        if key in cols:
            splits.append((key, cols[key].astype(str)))
    if not splits:
        splits.append(("all", np.full(values.shape, "all")))
    for key, split in splits:
        page.figure(f"hist_{main}_{key}", histogram_figure(values, split, f"{main} by {key}", main),
                    f"Distribution of {SCORE_LABELS.get(main, main)}, split by {key}.", half=True)
    if "loo_residual" in cols and main != "loo_residual" and splits[0][0] in ("noise", "adversarial"):
        key, split = splits[0]
        page.figure(f"hist_loo_residual_{key}", histogram_figure(cols["loo_residual"].astype(float), split,
                                                                 f"loo_residual by {key}", "loo_residual"),
                    f"Distribution of {SCORE_LABELS['loo_residual']}, split by {key}.", half=True)
    inputs = os.path.join(out_dir, "inputs.npz")
    if os.path.exists(inputs):
        with np.load(inputs) as f:
            X, image_shape = f["X"], tuple(int(s) for s in f["image_shape"])
        order = np.argsort(-values, kind="stable")
        labels = np.array([_label(v) for v in cols["label"]])
        noisy = cols["is_noisy"].astype(float) > 0 if "is_noisy" in cols else np.zeros(values.size, bool)
        true = np.array([_label(v) for v in cols["true_label"]]) if "true_label" in cols else labels
        for name, idx in (("most", order[:20]), ("least", order[::-1][:20])):
            caps = [f"y={labels[i]}" + (f" (true {true[i]})" if noisy[i] else "") for i in idx]
            page.figure(f"grid_{name}_informative", image_grid_figure(X[idx], image_shape, caps,
                                                                      f"{name} informative by {main}"),
                        f"The 20 {name} informative training samples (training label; '(true c)' marks a "
                        "flipped label and its true class).")


def _label(value):
    """A label read back from CSV for a caption: 3.0 -> '3', 'cat' -> 'cat'."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _detection_section(page, out_dir, cols):
    rows = read_csv(os.path.join(out_dir, "detection.csv"))
    bad_name = str(rows[0].get("bad", "is_noisy"))
    page.heading("Detection of " + ("mislabeled" if bad_name == "is_noisy" else "adversarial") + " samples")
    page.text("AUROC and average precision of each score as a detector (higher score = more suspicious), and the "
              "fraction of the bad samples found by inspecting the top 10% / 20% of the ranking.")
    page.table(rows)
    if cols and bad_name in cols:
        is_bad = cols[bad_name].astype(float) > 0
        from ntk_info.apps.detect import suspicion_from_columns

        scores = {r["method"]: suspicion_from_columns(cols, r["method"]) for r in rows}
        scores = {method: s for method, s in scores.items() if s is not None}
        if scores:
            page.figure("roc", roc_figure(scores, is_bad, f"ROC: detecting {bad_name}"), "ROC curve of every score.")


# ----------------------------------------------------------------------------- sources

_SOURCE_CAVEAT = ("Per-sample F-SI and the LOO residual measure how surprising a sample is to the rest of the data, "
                  "and wrong labels are surprising: a source with mislabeled samples shows higher scores (and a "
                  "larger share flagged by detection) while being worth less. Judge what a source is worth by the "
                  "without/only columns: the linearized model retrained exactly without every sample of the source, "
                  "and trained on only them.")


def source_value_figure(rows, title):
    """Per source: validation accuracy lost without it (-Δ; linearized, and the real network retrained when
    the table has it) and the validation accuracy with only it, against the full model's."""
    plt = _plt()
    body = [r for r in rows if r["group"] != "(all)"]
    full = [r for r in rows if r["group"] == "(all)"]
    names = [str(r["group"]) for r in body]
    x = np.arange(len(body))
    retrained = "delta_val_accuracy_without_retrained" in body[0]
    width = 0.38 if retrained else 0.6
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    shift = -width / 2 if retrained else 0.0
    axes[0].bar(x + shift, [-100 * float(r["delta_val_accuracy_without"]) for r in body], width,
                label="linearized (exact)", color="tab:blue")
    axes[1].bar(x + shift, [100 * float(r["val_accuracy_only"]) for r in body], width, label="linearized (exact)",
                color="tab:blue")
    if retrained:
        axes[0].bar(x + width / 2, [-100 * float(r["delta_val_accuracy_without_retrained"]) for r in body], width,
                    label="network retrained", color="tab:orange")
        axes[1].bar(x + width / 2, [100 * float(r["val_accuracy_only_retrained"]) for r in body], width,
                    label="network retrained", color="tab:orange")
    if full:
        axes[1].axhline(100 * float(full[0]["val_accuracy_only"]), color="tab:blue", ls="--", lw=1,
                        label="all sources (linearized)")
        if retrained and full[0].get("val_accuracy_only_retrained", "") != "":
            axes[1].axhline(100 * float(full[0]["val_accuracy_only_retrained"]), color="tab:orange", ls="--", lw=1,
                            label="all sources (retrained)")
    axes[0].axhline(0, color="gray", lw=0.8)
    axes[0].set_ylabel("validation accuracy lost without it (points)")
    axes[0].set_title(f"value of each {title} (higher = worth more)")
    axes[1].set_ylabel("validation accuracy (%)")
    axes[1].set_title(f"{title}: trained on only this {rows[0]['by']}")
    low = min(100 * float(r[key]) for r in body for key in ("val_accuracy_only", "val_accuracy_only_retrained")
              if r.get(key, "") != "")
    axes[1].set_ylim(max(0.0, low - 10), 100)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    return fig


def source_scores_figure(cols, split, names, title):
    """Per-source box plots of the per-sample scores (log10 F-SI, LOO residual) from scores.csv."""
    plt = _plt()
    present = [s for s in ("fsi", "loo_residual") if s in cols]
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 3.8), squeeze=False)
    for ax, score in zip(axes[0], present):
        data, logged = _log_values(cols[score].astype(float))
        ax.boxplot([data[split == g] for g in names], showfliers=False)
        ax.set_xticks(np.arange(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, fontsize=8)
        ax.set_ylabel(("log10 " if logged else "") + SCORE_LABELS.get(score, score), fontsize=8)
        ax.set_title(f"{title}: {score} per sample")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _sources_section(page, rows, cols):
    page.heading("Sources and groups")
    if not rows or "val_accuracy_without" not in rows[0]:  # a per-source score summary only
        page.text("Per-source (or per-group) distribution of the score; higher mean = more unique information "
                  "per sample (SI paper Fig. 2a).")
        page.table(rows)
        return
    page.text("What each source is worth to the model: validation loss and accuracy of the linearized network "
              "retrained exactly without the source (delta = without - full; negative accuracy deltas mean the "
              "source helps) and trained on only the source" + (", beside the real network retrained the same way."
                                                                 if "val_accuracy_without_retrained" in rows[0]
                                                                 else "."))
    page.text(_SOURCE_CAVEAT)
    for by in dict.fromkeys(r["by"] for r in rows):
        part = [r for r in rows if r["by"] == by]
        page.figure(f"source_value_{by}", source_value_figure(part, by),
                    f"Value of each {by}: validation accuracy lost when the model is trained without it (negative: the "
                    f"model is better without it), and accuracy with only it.")
        names = [str(r["group"]) for r in part if r["group"] != "(all)"]
        if cols and by in cols:
            page.figure(f"source_scores_{by}", source_scores_figure(cols, cols[by].astype(str), names, by),
                        f"Per-sample scores by {by} (boxes: quartiles, whiskers: 1.5 IQR). High scores flag "
                        "surprising samples, mislabeled ones among them, not valuable ones.")
        keys = [k for k in part[0] if k in ("group", "count") or k.startswith(("val_", "delta_val_", "test_"))
                or k in ("heldout_accuracy", "flagged_share", "fsi_mean", "loo_residual_mean")]
        page.table([{k: r[k] for k in keys} for r in part])
