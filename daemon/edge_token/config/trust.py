"""Who may change what the daemon runs, and where it listens: trust checks for the config file and hook programs,
the listen address and its exposure."""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path

from edge_token.core.errors import ConfigError


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1: the only places plain HTTP may go."""
    if host.lower() in ("localhost", "localhost."):
        return True
    import ipaddress  # only for http:// URLs

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464` -> (host, port); ConfigError otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    port = int(match.group(2) or match.group(4)) if match else -1
    if not match or not 0 <= port <= 65535:
        raise ConfigError(f'{where}: expected "host:port" (IPv6 as "[::1]:9464"), got {value!r}')
    return match.group(1) or match.group(3), port


def _owner_name(uid: int) -> str:
    import pwd  # only for this refusal's message (a trusted file, the usual case, needs no user name)

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _untrusted(info: os.stat_result, is_dir: bool) -> str | None:
    """Why someone other than root or us could change this file or directory, or None if nobody can.

    A directory writable by others lets them rename another file over ours, unless the sticky bit restricts
    renames to the owners (as on /tmp); a file or directory owned by another user can be chmod'ed by them.
    """
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by {_owner_name(info.st_uid)}, neither root nor this daemon's user"
    if mode & 0o022 and not (is_dir and mode & stat.S_ISVTX):
        kind = "without the sticky bit " if is_dir else ""
        return f"is writable by group or others {kind}(mode {mode:04o})"
    return None


def check_trusted_file(file: Path, info: os.stat_result, what: str) -> None:
    """Refuse `file` (already open; `info` from fstat) if anyone but root or us can change it or its directories.

    A config file is code: its `on_update` commands run as the daemon's user. If another local user can edit
    it (or swap it, through a writable directory above it), they can run commands as us on the next reload.
    Both the path as given and the path after symlinks are checked: either chain could be swapped.
    """
    problem = _untrusted(info, is_dir=False)
    if problem:
        raise ConfigError(
            f"{file}: refusing the {what}: it {problem}, so another local user could change what this daemon "
            f"runs; make it owned by root or this user and not group/other-writable (chown root {file}; "
            f"chmod go-w {file})"
        )
    absolute = Path(os.path.abspath(file))
    for directory in dict.fromkeys([*absolute.parents, *absolute.resolve().parents]):
        try:
            problem = _untrusted(directory.stat(), is_dir=True)
        except OSError:
            continue  # we opened the file through it; an unstat-able ancestor cannot be judged, only skipped
        if problem:
            raise ConfigError(
                f"{file}: refusing the {what}: its directory {directory} {problem}, so another local user could "
                f"replace the file; fix the directory (chown root {directory}; chmod go-w {directory}, or "
                f"chmod +t {directory} for a shared directory)"
            )


def listen_exposure(listen: str) -> str | None:
    """A warning when `[daemon] listen` is reachable from other hosts, None on loopback (or when disabled).

    /metrics holds no secret, but /status and /readyz tell anyone who can connect which profiles exist, when
    their tokens expire and why renewals fail: worth a line in the log whenever it is not loopback-only.
    """
    if not listen:
        return None
    host, _ = parse_listen(listen, "[daemon] listen")
    if is_loopback_host(host):
        return None
    where = "every interface" if host in ("0.0.0.0", "::", "") else f"{host}, not a loopback address"
    return (
        f"[daemon] listen = {listen!r} serves /status, /readyz and /metrics on {where}: anyone who can reach it "
        "learns the profile names, token expiry times and renewal errors; bind 127.0.0.1 (or ::1) or firewall it"
    )
