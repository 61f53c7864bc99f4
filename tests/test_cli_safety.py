"""Issue 9: the CLI never loses a user's files, refuses bad input before any work, and exits cleanly.

Exit codes and signals are checked on real subprocesses; everything else runs ``main`` in-process.
"""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from ntk_info import cli
from ntk_info.cli import main
from ntk_info.report import read_csv

SMALL = ["--n-train", "40", "--width", "16", "--steps", "20", "--coords-per-layer", "100", "--no-progress"]


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("ntk-info: error: "), err
    return lines[0]


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def _out_file(p):
    (p / "file").write_text("")
    return str(p / "file" / "sub")


def _data_dir(p):
    (p / "x.csv").mkdir()
    return str(p / "x.csv")


def _unreadable(p):
    os.symlink("/proc/self/mem", p / "mem.csv")  # opens but cannot be read (EIO), even as root
    return str(p / "mem.csv")


def _npz(p, name, X, y):
    np.savez(p / name, X=X, y=y)
    return str(p / name)


@pytest.mark.parametrize("command, make_argv, message", [
    ("score", lambda p: ["--steps", "0"], r"--steps: expected an integer >= 1, got 0"),
    ("score", lambda p: ["--lr", "0"], r"--lr: expected a finite number in \(0, inf\), got 0.0"),
    ("score", lambda p: ["--width", "0"], r"--width: expected an integer >= 1, got 0"),
    ("score", lambda p: ["--coords-per-layer", "0"], r"--coords-per-layer: expected an integer >= 1"),
    ("score", lambda p: ["--seed", "-1"], r"--seed: expected an integer >= 0, got -1"),
    ("score", lambda p: ["--n-train", "1"], r"--n-train: expected an integer >= 2"),
    ("score", lambda p: ["--weight-decay", "-1"], r"--weight-decay: expected a finite number in \[0, inf\)"),
    ("score", lambda p: ["--val-fraction", "1"], r"--val-fraction: expected a finite number in \(0, 1\)"),
    ("detect", lambda p: ["--adversarial", "0.1", "--eps", "-1"], r"--eps: expected a finite number > 0"),
    ("detect", lambda p: ["--adversarial", "1.5"], r"--adversarial: expected 0 \(off\) or a number in \(0, 1\)"),
    ("detect", lambda p: ["--adversarial", "0.1", "--noise", "0.1"], r"choose one kind of bad sample"),
    ("summarize", lambda p: ["--fractions", "0.1,1.5"], r"--fractions: expected numbers in \(0, 1\)"),
    ("summarize", lambda p: ["--fractions", "0"], r"--fractions: expected numbers in \(0, 1\)"),
    ("summarize", lambda p: ["--retrain-width", "0"], r"--retrain-width: expected an integer >= 1"),
    ("compare", lambda p: ["--subset-size", "1"], r"--subset-size: expected an integer in \[2, 40\]"),
    ("compare", lambda p: ["--compare-methods", "magic"], r"--compare-methods: unknown \['magic'\]"),
    ("score", lambda p: ["--noise", "0.001"], r"--noise: 0.001 flips no sample of the 40 training samples"),
    ("score", lambda p: ["--classes", "four,nine"], r"--classes: \['four', 'nine'\] are not labels of digits"),
    ("score", lambda p: ["--classes", "4"], r"--classes: expected at least two distinct classes"),
    ("score", lambda p: ["--out", ""], r"--out: expected a directory path, got an empty string"),
    ("score", lambda p: ["--out", _out_file(p)], r"--out '.*/file/sub': '.*/file' is a file"),
    ("score", lambda p: ["--out", "/proc/ntk-info-test/r"], r"--out '/proc/ntk-info-test/r': cannot create a folder"),
    ("score", lambda p: ["--model", "cnn", "--data", "iris"], r"--model: cnn needs images .* 'iris' has tabular rows"),
    ("score", lambda p: ["--model", "transformer"], r"--model: unknown model 'transformer'"),
    ("score", lambda p: ["--data", _data_dir(p)], r"--data '.*/x.csv' is a directory"),
    ("score", lambda p: ["--data", _unreadable(p)], r"--data '.*/mem.csv': cannot read the file \(Input/output"),
    ("score", lambda p: ["--data", _npz(p, "c.npz", np.ones((30, 3)), np.arange(30) % 2)],
     r"every input feature is constant across the \d+ training samples"),
    ("score", lambda p: ["--data", _npz(p, "h.npz", np.random.default_rng(0).uniform(size=(30, 4, 4, 1)) * 1e300,
                                        np.arange(30) % 2)], r"NTK of the mlp at init is degenerate .*rescale X"),
])
def test_every_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, command, make_argv, message):
    out = tmp_path / "o"
    argv = [command, "--out", str(out), *SMALL, *make_argv(tmp_path)]  # the case's options override SMALL's
    before = sorted(os.listdir(tmp_path))
    status, _, err = _run(capsys, *argv)
    assert status == 2
    assert re.search(message, _one_error_line(err)), err
    assert sorted(os.listdir(tmp_path)) == before  # neither --out nor a temporary folder next to it


def test_an_internal_bug_shows_its_traceback(tmp_path, monkeypatch):
    from ntk_info.apps import pipeline

    def bug(*args, **kwargs):
        raise TypeError("an internal bug")

    monkeypatch.setattr(pipeline, "split_rows", bug)
    with pytest.raises(TypeError, match="an internal bug"):
        main(["score", "--out", str(tmp_path / "o"), *SMALL])
    assert sorted(os.listdir(tmp_path)) == []  # the unfinished run's temporary folder is gone


def test_force_replaces_only_what_ntk_info_wrote(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(capsys, "score", "--out", str(out), *SMALL)[0] == 0
    first = json.loads((out / "manifest.json").read_text())["files"]
    assert set(first) == set(_files(out)) - {"manifest.json"}
    scores = (out / "scores.csv").read_text()
    # an invalid rerun with --force changes nothing (issue 9 §1a: today it leaves r empty)
    status, _, err = _run(capsys, "score", "--out", str(out), "--force", "--noise", "1.5", *SMALL)
    assert status == 2 and (out / "scores.csv").read_text() == scores
    assert set(_files(out)) == set(first) | {"manifest.json"}
    # the user's own files survive a valid rerun; stale results of another subcommand do not
    (out / "figures" / "mine.png").write_text("mine")
    (out / "notes.txt").write_text("mine")
    (out / "detection.csv").write_text("stale")
    status, _, err = _run(capsys, "score", "--out", str(out), "--force", "--seed", "1", *SMALL)
    assert status == 2 and "detection.csv' was not written by ntk-info" in _one_error_line(err)
    (out / "detection.csv").unlink()
    status, _, err = _run(capsys, "score", "--out", str(out), "--force", "--seed", "1", *SMALL)
    assert status == 0, err
    assert (out / "figures" / "mine.png").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"
    assert (out / "scores.csv").read_text() != scores
    assert set(json.loads((out / "manifest.json").read_text())["files"]) == set(first)
    assert sorted(os.listdir(tmp_path)) == ["r"]


@pytest.mark.parametrize("name, make", [("inputs.npz", lambda p: np.savez(p, mine=np.arange(3))),
                                        ("figures", lambda p: p.write_text("a file of mine"))])
def test_a_users_file_where_a_run_writes_is_refused_before_any_work(tmp_path, capsys, name, make):
    out = tmp_path / "r"
    out.mkdir()
    make(out / name)
    status, _, err = _run(capsys, "score", "--out", str(out), "--force", *SMALL)
    assert status == 2 and name in _one_error_line(err)
    assert os.listdir(out) == [name] and sorted(os.listdir(tmp_path)) == ["r"]


def _ntk_info(*argv, **kwargs):
    exe = os.path.join(os.path.dirname(sys.executable), "ntk-info")
    return subprocess.Popen([exe, *argv], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_previous_results(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(capsys, "score", "--out", str(out), *SMALL)[0] == 0
    before = {f: (out / f).read_bytes() for f in _files(out)}
    # Ctrl-C as in a terminal: SIGINT at its default even when this test runs in a background job (which
    # inherits SIGINT ignored, and so would its child); 500 samples keep the run going until the interrupt lands
    proc = _ntk_info("score", "--out", str(out), "--force", "--seed", "1", *SMALL, "--n-train", "500",
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "[estimate lr]" not in seen:  # interrupt once the run is under way (its temporary folder exists)
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    assert any(cli.PARTIAL in name for name in os.listdir(tmp_path))
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=600)
    assert proc.returncode == 130
    lines = [line for line in rest.splitlines() if line.strip() and not line.startswith("[")]
    assert lines == [f"ntk-info: interrupted; {out} was not changed"], rest
    assert {f: (out / f).read_bytes() for f in _files(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_report_refuses_unfinished_or_damaged_folders(tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(capsys, "score", "--out", str(out), *SMALL)[0] == 0
    assert _run(capsys, "report", str(out))[0] == 0  # re-rendering keeps the manifest valid
    assert _run(capsys, "report", str(out))[0] == 0
    scores = (out / "scores.csv").read_bytes()
    (out / "scores.csv").write_bytes(scores[:-30])  # cut mid-row
    status, _, err = _run(capsys, "report", str(out))
    assert status == 2 and re.search(r"r/scores.csv: changed since the run wrote it", _one_error_line(err))
    (out / "scores.csv").write_bytes(scores)
    (out / "settings.json").unlink()  # what an interrupted run used to leave
    status, _, err = _run(capsys, "report", str(out))
    assert status == 2 and re.search(r"r/settings.json: listed in manifest.json but missing", _one_error_line(err))
    (out / "manifest.json").unlink()
    status, _, err = _run(capsys, "report", str(out))
    assert status == 2 and re.search(r"r/manifest.json: missing", _one_error_line(err))
    partial = tmp_path / f".r{cli.PARTIAL}x"
    partial.mkdir()
    (partial / "scores.csv").write_bytes(scores)
    (partial / cli.INCOMPLETE_MARKER).write_text("")
    status, _, err = _run(capsys, "report", str(partial))
    assert status == 2 and "this run did not finish" in _one_error_line(err)


def test_unstable_lr_is_refused_with_the_limit_or_carried_as_a_warning(tmp_path, capsys):
    status, _, err = _run(capsys, "score", "--out", str(tmp_path / "a"), *SMALL, "--lr", "5")
    line = _one_error_line(err)
    assert status == 2 and re.search(r"--lr: lr 5 is at or above the GD stability limit 2/\(lambda_max \+ "
                                     r"weight_decay\) = [0-9.]+ .*--allow-unstable-lr", line)
    assert sorted(os.listdir(tmp_path)) == []
    status, _, err = _run(capsys, "score", "--out", str(tmp_path / "b"), *SMALL, "--lr", "5", "--allow-unstable-lr")
    assert status == 0 and "ntk-info: warning: lr 5 is at or above" in err
    settings = json.loads((tmp_path / "b" / "settings.json").read_text())
    assert len(settings["warnings"]) == 1 and settings["lr"] == 5
    assert "<h2>Warnings</h2>" in (tmp_path / "b" / "report.html").read_text()


def test_detect_adversarial_example_from_the_help_needs_no_noise_flag(tmp_path, capsys):
    status, _, err = _run(capsys, "detect", "--out", str(tmp_path / "adv"), *SMALL, "--adversarial", "0.1", "--eps",
                          "0.05", "--methods", "fsi,loo_residual")
    assert status == 0, err
    settings = json.loads((tmp_path / "adv" / "settings.json").read_text())
    assert settings["noise"] == 0.0 and settings["adversarial"] == 4
    rows = read_csv(tmp_path / "adv" / "scores.csv")
    assert sum(r["is_adversarial"] for r in rows) == 4
