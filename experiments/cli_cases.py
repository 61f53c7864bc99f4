"""Every bad-input / interruption case of issue 9, run against a checkout of ntk_info: exit code and message.

    python experiments/cli_cases.py [--code PATH_TO_CHECKOUT] [--only NAME ...]

Each case runs ``ntk-info`` (the ``ntk_info.cli`` found in ``--code``, default: this checkout) as a
subprocess in a fresh temporary folder and prints one markdown row: case, exit status, the
non-progress lines of stderr (first 220 characters), and for the output-folder cases what is left.
Run it on an old checkout and on this one for a before/after table. Small sizes throughout.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

SMALL = ["--n-train", "40", "--width", "16", "--steps", "20", "--coords-per-layer", "100", "--no-progress"]


def ntk_info(code, cwd, *argv, timeout=900, interrupt_after=None):
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {code!r}); from ntk_info.cli import main; "
                                 "sys.exit(main(sys.argv[1:]))", *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if interrupt_after is None:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        return proc.returncode, proc.stderr
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = ""
    while interrupt_after not in seen:  # wait until the run reaches the named stage
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=timeout)[1]
    return proc.returncode, seen + rest


def message(stderr):
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")
             and not line.startswith("timing") and not line.startswith("  ")]
    text = " / ".join(lines[-3:]) if lines else ""
    return (f"{len(lines)} lines: " if len(lines) > 3 else "") + text[:220].replace("|", "\\|")


def listing(folder):
    if not os.path.exists(folder):
        return "(absent)"
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return ", ".join(sorted(found)) or "(empty)"


def cases(code):
    def simple(*argv, command="score"):
        def run(cwd):  # the case's options come last, so they override SMALL's
            status, err = ntk_info(code, cwd, command, "--out", "o", *SMALL, *argv)
            return status, message(err)
        return run

    def out_file_sub(cwd):
        open(os.path.join(cwd, "file"), "w").close()
        status, err = ntk_info(code, cwd, "score", "--out", "file/sub", *SMALL)
        return status, message(err)

    def data_dir(cwd):
        os.mkdir(os.path.join(cwd, "x.csv"))
        status, err = ntk_info(code, cwd, "score", "--data", "x.csv", "--out", "o", *SMALL)
        return status, message(err)

    def unreadable(cwd):
        os.symlink("/proc/self/mem", os.path.join(cwd, "mem.csv"))  # opens, but reading fails (EIO), even as root
        status, err = ntk_info(code, cwd, "score", "--data", "mem.csv", "--out", "o", *SMALL)
        return status, message(err)

    def force_then_bad_run(cwd):
        ntk_info(code, cwd, "score", "--data", "iris", "--steps", "200", "--out", "r", "--no-progress")
        status, err = ntk_info(code, cwd, "score", "--data", "iris", "--noise", "1.5", "--force", "--out", "r",
                               "--no-progress")
        return status, message(err) + f" → r: {listing(os.path.join(cwd, 'r'))}"

    def force_keeps_user_files(cwd):
        ntk_info(code, cwd, "score", "--data", "digits", "--out", "r", *SMALL)
        os.makedirs(os.path.join(cwd, "r", "figures"), exist_ok=True)
        open(os.path.join(cwd, "r", "figures", "mine.png"), "w").write("mine")
        open(os.path.join(cwd, "r", "notes.txt"), "w").write("mine")
        status, err = ntk_info(code, cwd, "score", "--data", "digits", "--force", "--out", "r", *SMALL)
        return status, message(err) + f" → r: {listing(os.path.join(cwd, 'r'))}"

    def user_inputs_npz(cwd):
        os.makedirs(os.path.join(cwd, "r"))
        np.savez(os.path.join(cwd, "r", "inputs.npz"), mine=np.arange(3))
        status, err = ntk_info(code, cwd, "score", "--data", "digits", "--force", "--out", "r", *SMALL)
        return status, message(err) + f" → r: {listing(os.path.join(cwd, 'r'))}"

    def user_file_named_figures(cwd):
        os.makedirs(os.path.join(cwd, "r"))
        open(os.path.join(cwd, "r", "figures"), "w").write("mine")
        status, err = ntk_info(code, cwd, "score", "--data", "digits", "--force", "--out", "r", *SMALL)
        return status, message(err) + f" → r: {listing(os.path.join(cwd, 'r'))}"

    def ctrl_c(cwd):
        ntk_info(code, cwd, "score", "--data", "digits", "--out", "r", *SMALL)
        before = listing(os.path.join(cwd, "r"))
        status, err = ntk_info(code, cwd, "score", "--data", "digits", "--force", "--out", "r", *SMALL,
                               interrupt_after="[scores")
        after = listing(os.path.join(cwd, "r"))
        left = [d for d in os.listdir(cwd) if d != "r"]
        return status, (message(err) + f" → r {'unchanged' if after == before else 'CHANGED: ' + after}; "
                        f"other folders left: {left or 'none'}")

    def report_of(mutate):
        def run(cwd):
            ntk_info(code, cwd, "score", "--data", "digits", "--out", "r", *SMALL)
            mutate(os.path.join(cwd, "r"))
            status, err = ntk_info(code, cwd, "report", "r")
            return status, message(err)
        return run

    def cut_mid_row(folder):
        path = os.path.join(folder, "scores.csv")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) - 30])

    def header_only(folder):
        path = os.path.join(folder, "scores.csv")
        header = open(path).readline()
        open(path, "w").write(header)

    def list_settings(folder):
        open(os.path.join(folder, "settings.json"), "w").write("[1, 2]")

    def interrupted_folder(folder):  # what an interrupted run of the old code leaves: no settings.json
        os.remove(os.path.join(folder, "settings.json"))

    def npz(name, X, y):
        def run(cwd):
            np.savez(os.path.join(cwd, name), X=X, y=y)
            status, err = ntk_info(code, cwd, "score", "--data", name, "--out", "o", *SMALL)
            return status, message(err)
        return run

    def adversarial_1e6(cwd):
        from sklearn.datasets import load_digits

        d = load_digits()
        np.savez(os.path.join(cwd, "big.npz"), X=d.images[:300] / 16.0 * 1e6, y=d.target[:300])
        status, err = ntk_info(code, cwd, "detect", "--data", "big.npz", "--adversarial", "0.1", "--eps", "0.05",
                               "--noise", "0", "--methods", "fsi,loo_residual,train_loss", "--out", "o",
                               "--n-train", "150", "--width", "64", "--steps", "100", "--coords-per-layer", "300",
                               "--no-progress")
        detection = os.path.join(cwd, "o", "detection.csv")
        table = open(detection).read().replace("\n", " ; ") if os.path.exists(detection) else ""
        return status, message(err) + (f" → detection.csv: {table[:200]}" if table else "")

    rng = np.random.default_rng(0)
    return {
        "--steps 0": simple("--steps", "0"),
        "--lr 0": simple("--lr", "0"),
        "--width 0": simple("--width", "0"),
        "--coords-per-layer 0": simple("--coords-per-layer", "0"),
        "--eps -1": simple("--adversarial", "0.1", "--noise", "0", "--eps", "-1", command="detect"),
        "--adversarial 1.5": simple("--adversarial", "1.5", "--noise", "0", command="detect"),
        "--fractions 0.1,1.5": simple("--fractions", "0.1,1.5", command="summarize"),
        "--noise 0.001 (flips none of 40)": simple("--noise", "0.001"),
        "--classes four": simple("--classes", "four"),
        "--seed -1": simple("--seed", "-1"),
        "--out ''": lambda cwd: (lambda r: (r[0], message(r[1])))(ntk_info(code, cwd, "score", "--out", "", *SMALL)),
        "--out file/sub": out_file_sub,
        "--out /proc/x (unwritable)": lambda cwd: (lambda r: (r[0], message(r[1])))(
            ntk_info(code, cwd, "score", "--out", "/proc/ntk-info-test", *SMALL)),
        "--model cnn on iris": simple("--model", "cnn", "--data", "iris"),
        "--data x.csv (a directory)": data_dir,
        "--data unreadable file": unreadable,
        "--force, then an invalid run (issue 9 §1a)": force_then_bad_run,
        "--force keeps r/figures/mine.png, r/notes.txt": force_keeps_user_files,
        "--force with the user's r/inputs.npz": user_inputs_npz,
        "--force with a plain file r/figures": user_file_named_figures,
        "Ctrl-C during scoring of a --force rerun": ctrl_c,
        "report: interrupted run (no settings.json)": report_of(interrupted_folder),
        "report: scores.csv cut mid-row": report_of(cut_mid_row),
        "report: header-only scores.csv": report_of(header_only),
        "report: list-valued settings.json": report_of(list_settings),
        "iris --lr 0.05 (above the limit)": simple("--data", "iris", "--lr", "0.05", "--n-train", "105",
                                                   "--width", "256", "--steps", "1000"),
        "constant X": npz("const.npz", np.ones((60, 3)), np.arange(60) % 2),
        "X x 1e300 (images)": npz("huge.npz", rng.uniform(size=(60, 4, 4, 1)) * 1e300, np.arange(60) % 2),
        "detect --adversarial on x1e6 images": adversarial_1e6,
        "README: detect --adversarial 0.1 --eps 0.05": simple("--data", "digits", "--adversarial", "0.1", "--eps",
                                                              "0.05", "--methods", "fsi,loo_residual",
                                                              command="detect"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--only", nargs="*", help="substrings of case names to run")
    args = parser.parse_args()
    print(f"code: {args.code}\n\n| case | exit | stderr (and what is left) |\n|---|---|---|")
    for name, run in cases(os.path.abspath(args.code)).items():
        if args.only and not any(s in name for s in args.only):
            continue
        with tempfile.TemporaryDirectory() as cwd:
            try:
                status, text = run(cwd)
            except subprocess.TimeoutExpired:
                status, text = "timeout", ""
        print(f"| {name} | {status} | {text} |", flush=True)


if __name__ == "__main__":
    main()
