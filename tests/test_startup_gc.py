"""Start-up runs with the cyclic collector off (imports and the config allocate what lives as long as the process:
collecting it again and again cost ~30 ms of a 1,000-profile start), and no command runs on with it off: `run` and
`once` turn it on once the config is read (start-up's objects frozen out of its collections), whether or not it
could be; every other command before it starts (`--help` and `--version` answer while parsing and exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import gc, runpy, sys
sys.argv = ["edge-token", *sys.argv[1:]]
try:
    runpy.run_module("edge_token", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code, "collector", "on" if gc.isenabled() else "OFF", "frozen", gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["once", "-c", "{missing}"],
        ["run", "-c", "{missing}"],
        ["once", "-c", "{config}", "--profile", "nope"],
        ["check", "-c", "{missing}"],
        ["inspect", "{missing}"],
    ],
)
def test_no_command_runs_on_with_the_collector_off(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[profiles.main]\nclient_id = "c"\nclient_secret = "s-e-c-r-e-t"\ntoken_url = "https://a/t"\n')
    args = [a.format(missing=tmp_path / "missing.toml", config=config) for a in argv]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=60)
    assert "collector on" in done.stdout, (done.stdout, done.stderr[-1000:])
    assert done.stdout.rstrip().endswith("frozen " + str(argv[0] in ("once", "run"))), done.stdout
