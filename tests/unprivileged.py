"""Running this interpreter, with its site-packages and our package, as an unprivileged user.

On CI the interpreter lives under /root (mode 0700): `nobody` cannot even read its standard library. Giving the
child a capability to read it would change what is being tested (the kernel then shields a more privileged
process from less privileged ones anyway). Instead the child runs in a private mount namespace where the
interpreter's prefix and our package directory are bind-mounted under /tmp, readable by everyone — the same
files, reached by a path without /root in it.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

import edge_token
from edge_token.localauth import LocalAuthServer


def _blocked(path: Path) -> bool:
    """True if some directory above `path` is not searchable by others."""
    return any(not os.stat(parent).st_mode & 0o001 for parent in [path, *path.parents] if parent.is_dir())


def as_user(uid: int, gid: int, *argv: str) -> list[str]:
    """argv that runs `sys.executable ARGV...` (argv[0] must be sys.executable) as uid/gid from a view any user
    can read; the rest of argv is passed through."""
    if argv[0] != sys.executable:
        raise ValueError("as_user runs this interpreter only")
    prefix, package = Path(sys.base_prefix), Path(edge_token.__file__).parent.parent
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    if not (_blocked(prefix) or _blocked(package)):
        return [*setpriv, *argv]
    real = Path(os.path.realpath(sys.executable))  # a venv's python is usually a link to the base interpreter
    if not real.is_relative_to(prefix):  # a venv made with --copies: the base interpreter is the same program
        real = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        if not real.exists():
            raise RuntimeError(f"{sys.executable} is not under {prefix} and {real} does not exist")
    view = Path(tempfile.mkdtemp(prefix="edge-token-view-"))
    view.chmod(0o755)
    (view / "prefix").mkdir()
    (view / "package").mkdir()
    paths = [str(view / "package")]
    if Path(sys.prefix) != prefix:  # a venv: its own site-packages, which must be readable where it is
        paths += [p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages")]
    script = (
        f"mount --bind {shlex.quote(str(prefix))} {view / 'prefix'} && "
        f"mount --bind {shlex.quote(str(package))} {view / 'package'} && "
        f"PYTHONPATH={shlex.quote(':'.join(paths))} LD_LIBRARY_PATH={view / 'prefix' / 'lib'} "
        f"exec {shlex.join([*setpriv, str(view / 'prefix' / real.relative_to(prefix)), *argv[1:]])}"
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]


def secret_in_environment(directory: Path, auth: LocalAuthServer, owner: int = 65534) -> tuple[Path, dict[str, str]]:
    """(a config everyone can read, the environment for it): one profile whose client secret comes from the
    environment (`EDGE_TEST_SECRET`) and whose sink is in `directory`/out, owned by `owner`. For the tests that
    read another process's environment as the same unprivileged user."""
    from conftest import CLIENT_SECRET, profile_toml

    out = directory / "out"
    out.mkdir()
    os.chown(out, owner, owner)
    config = directory / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = ""\n'
        + profile_toml("main", auth, Path("/unused"), [{"path": str(out / "t.jwt")}])
        .replace('client_secret_file = "/unused"', 'client_secret_env = "EDGE_TEST_SECRET"')
    )  # fmt: skip
    config.chmod(0o644)
    return config, {**os.environ, "EDGE_TEST_SECRET": CLIENT_SECRET}
