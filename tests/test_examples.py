"""Every ``ntk-info`` command line shown in README.md and in ``ntk-info --help`` runs (on small sizes)."""
import os
import re
import shlex

import numpy as np
import pytest

from ntk_info import cli
from ntk_info.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--n-train", "60", "--width", "16", "--steps", "20", "--coords-per-layer", "100", "--no-progress"]
EXTRA = {"demo": ["--fractions", "0.1", "--retrain-width", "8", "--retrain-steps", "10"],
         "summarize": ["--fractions", "0.1", "--retrain-width", "8", "--retrain-steps", "10"]}


def documented_commands():
    """argv lists of every `ntk-info ...` line: README code blocks and `inline` commands, then the --help epilog."""
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    lines = re.findall(r"^\s+(ntk-info\s.*)$", readme, flags=re.M) + re.findall(r"`(ntk-info\s[^`]*)`", readme)
    lines += [line.strip() for line in cli.EPILOG.splitlines() if line.strip().startswith("ntk-info ")]
    commands = []
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line)  # README comments
        line = re.sub(r"\s{2,}\(.*\)$", "", line)  # epilog notes in parentheses
        argv = shlex.split(line)[1:]
        if argv not in commands:
            commands.append(argv)
    return commands


def test_the_documented_commands_are_found():
    commands = documented_commands()
    subcommands = {argv[0] for argv in commands}
    assert {"score", "detect", "summarize", "sources", "compare", "report", "demo", "--help"} <= subcommands
    assert ["detect", "--data", "digits", "--adversarial", "0.1", "--eps", "0.05", "--out", "results/adv"] in commands


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("my.npz", X=rng.normal(size=(120, 5)), y=np.arange(120) % 2, source=np.array(["a", "b", "c"] * 40))
    commands = documented_commands()
    # `report FOLDER` re-renders what an earlier example wrote: run those last
    for argv in sorted(commands, key=lambda a: a[0] == "report"):
        if argv == ["--help"]:
            with pytest.raises(SystemExit) as info:
                main(argv)
            assert info.value.code == 0
            continue
        extra = [] if argv[0] == "report" else SMALL + EXTRA.get(argv[0], []) + ["--force"] * ("--force" not in argv)
        status = main(argv + extra)
        err = capsys.readouterr().err
        assert status == 0, f"ntk-info {' '.join(argv)}: {err}"
