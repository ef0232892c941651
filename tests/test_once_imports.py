"""`once` imports only what it needs (issue 15, cold `once` at the floor): no structlog, APScheduler or
prometheus-client, no stdlib module it uses only on demand, and no class whose definition compiles code
(dataclasses: ~0.7 ms each at import). Counted, never timed."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from cliproc import edge_token
from conftest import profile_toml, run_child
from daemonproc import reference_check
from edge_token.localauth import LocalAuthServer

FORBIDDEN = ("structlog", "apscheduler", "prometheus_client")
# a sink's group, an untrusted file's owner name, an unknown key's suggestion (and `html`, which unescaping a
# scrubbed word imports: not listed, as whether a line holds an `&` once decoded depends on the token's random
# bytes, which made this test flaky)
ON_DEMAND = ("grp", "pwd", "difflib")
# standard-library modules the floor (a minimal aiohttp+joserfc script) does not import either: prctl is called
# through `_ctypes` (hardening.py), a plain argv is read without argparse (cli.plain)
UNNEEDED = ("ctypes", "argparse")
# our modules a plain `once` (no ca_file, no [fleet]) has no use for: argparse's parser, the TLS file loader
LAZY = ("edge_token.cliparser", "edge_token.net.tls")
SECRET = "hunter2-plainlog-5f1e"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def _modules(stderr: str) -> set[str]:
    """Modules named by `python -X importtime` lines."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by `python -X importtime` lines."""
    return {module.split(".")[0] for module in _modules(stderr)}


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_once_imports_neither_structlog_apscheduler_nor_prometheus_client(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """A real cold `once` (request, verify, write) imports none of the daemon-only libraries, still writes a
    verified token, and logs JSON lines with the daemon's fields."""
    sink = tmp_path / "token.jwt"
    config = tmp_path / "config.toml"
    config.write_text(profile_toml("main", auth, secret_file, [{"path": str(sink)}]))
    code, _out, err = await edge_token("once", "-c", str(config), argv0=[sys.executable, "-X", "importtime"])
    assert code == 0, err[-2000:]
    assert reference_check(sink.read_text(), auth) is None
    imported = _imported(err)
    assert "aiohttp" in imported and "joserfc" in imported  # the measurement sees the libraries it does use
    assert sorted(set(FORBIDDEN) & imported) == []
    assert sorted(set(ON_DEMAND) & imported) == []
    assert sorted(set(UNNEEDED) & imported) == []
    assert "edge_token.config" in _modules(err) and sorted(set(LAZY) & _modules(err)) == []
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(e["event"], e["level"]) for e in lines] == [("sink.written", "info"), ("token.renewed", "info")]
    assert list(lines[1]) == ["profile", "fingerprint", "expires_at", "lifetime", "event", "level", "timestamp"]
    assert lines[1]["timestamp"].endswith("Z")


ARGVS = [
    ["once", "-c", "x.toml", "--profile", "a", "--timeout", "5"],
    ["run", "--profile", "a", "--profile", "b"],
    ["exec", "-c", "x.toml", "--on-rotation", "signal", "--", "sleep", "1"],
    ["check", "--online", "--as", "nobody"],
    ["inspect", "t.jwt", "--verify"],
    ["local-auth", "--client-secret-file", "s", "--port", "1"],
    ["demo", "--ttl", "3"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=[argv[0] for argv in ARGVS])
def test_the_parser_built_for_one_command_parses_and_helps_like_the_full_one(argv: list[str]) -> None:
    """`once` builds only its own subparser: for every command the arguments parse to the same values and the
    command's --help is the same text as with every command built."""
    from edge_token import cliparser

    full, partial = cliparser.build([]), cliparser.build(argv)
    assert vars(partial.parse_args(argv)) == vars(full.parse_args(argv))
    helps = []
    for parser in (full, partial):
        with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
            parser.parse_args([argv[0], "--help"])
        helps.append(out.getvalue())
    assert helps[0] == helps[1] and argv[0] in helps[0]


def _reachable_by_anyone(path: Path) -> None:
    """`nobody` must be able to walk to `path` (pytest's base directory is 0700)."""
    path.chmod(0o755)
    for parent in path.parents:
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)


@pytest.mark.usefixtures("live_auth")
async def test_check_as_another_user_has_every_module_it_imports_on_demand(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`check --as` drops to a user who may not read this interpreter's files (here under /root, mode 0700), so
    what config loading and scrubbing import only on demand (to keep `once` light) must already be loaded: the
    suggestion for an unknown key (difflib), a sink's owner and group (pwd, grp), a printed line with an `&`
    (html). Each case ends with its own answer, never "internal error" (exit 70)."""
    _reachable_by_anyone(tmp_path)
    odd = tmp_path / "tokens&keys"
    odd.mkdir(mode=0o755)
    sink = {"path": str(odd / "token.jwt"), "owner": "root", "group": "root"}
    valid = tmp_path / "valid.toml"
    valid.write_text('[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, [sink]))
    typo = tmp_path / "typo.toml"
    typo.write_text(valid.read_text().replace("client_id =", "client_idd ="))
    for config in (valid, typo):
        config.chmod(0o644)
    code, out, err = await edge_token("check", "--as", "nobody", "-c", str(typo))
    assert code == 78 and "did you mean 'client_id'?" in err, err[-2000:]
    code, out, err = await edge_token("check", "--as", "nobody", "-c", str(valid))
    assert "internal error" not in err and code in (0, 73, 78), err[-2000:]
    assert f"sink file:{odd}/token.jwt" in out, (code, out, err[-3000:])  # the `&` line, scrubbed and printed


DATACLASSES_AFTER = """
import dataclasses, json, sys
from edge_token.cli import main
code = main(sys.argv[1:])
ours = [module for name, module in list(sys.modules.items()) if name.split(".")[0] == "edge_token"]
classes = sorted(
    f"{module.__name__}.{name}"
    for module in ours
    for name, value in vars(module).items()
    if isinstance(value, type) and value.__module__ == module.__name__ and dataclasses.is_dataclass(value)
)
print(json.dumps({"code": code, "modules": len(ours), "dataclasses": classes}), file=sys.__stdout__)
"""


@pytest.mark.usefixtures("live_auth")
async def test_once_defines_no_dataclass(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> None:
    """A real `once` (request, verify, write) defines none of our classes with the dataclass decorator, which
    compiles five or six methods per class at import: the value classes on its path are Records
    (core/record.py); before, 19 dataclasses cost ~14 ms of its start."""
    sink = tmp_path / "token.jwt"
    config = tmp_path / "config.toml"
    config.write_text(profile_toml("main", auth, secret_file, [{"path": str(sink)}]))
    _, out, err = await run_child(sys.executable, "-c", DATACLASSES_AFTER, "once", "-c", str(config))
    report = json.loads(out.decode().splitlines()[-1])
    assert report["code"] == 0, err.decode()[-2000:]
    assert reference_check(sink.read_text(), auth) is None
    assert report["modules"] > 20  # the census saw our modules
    assert report["dataclasses"] == []
