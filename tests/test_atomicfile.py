"""The atomic writer: exact modes, skip-if-unchanged, no temp files left, no symlinks followed."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_token.core.errors import SinkError
from edge_token.sinks.atomicfile import remove_stale_temps, temp_name, write_atomic
from unprivileged import as_user


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_mode_is_exact_under_a_permissive_umask(tmp_path: Path) -> None:
    """umask 000 must not widen the file; umask 077 must not narrow a configured 0640."""
    target = tmp_path / "t.jwt"
    old = os.umask(0)
    try:
        write_atomic(target, b"one", 0o600)
        assert mode_of(target) == 0o600
    finally:
        os.umask(0o077)
    try:
        write_atomic(target, b"two", 0o640)
        assert mode_of(target) == 0o640
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two"


def test_unchanged_bytes_skip_the_write(tmp_path: Path) -> None:
    """Same bytes and mode: no replacement (the inode stays), and False is returned."""
    target = tmp_path / "t.jwt"
    assert write_atomic(target, b"token", 0o600) is True
    inode = target.stat().st_ino
    assert write_atomic(target, b"token", 0o600) is False
    assert target.stat().st_ino == inode
    assert write_atomic(target, b"token", 0o640) is True  # a mode change is a change
    assert target.stat().st_ino != inode


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(public_dir: Path) -> None:
    """Writing into a directory the process may read but not write fails specifically; the old file survives.

    Root ignores permissions, so the write runs as `nobody` in a child process.
    """
    directory = public_dir / "sink"
    directory.mkdir(mode=0o755)
    target = directory / "t.jwt"
    write_atomic(target, b"old-token", 0o644)
    code = (
        "import sys; from pathlib import Path; from edge_token.sinks.atomicfile import write_atomic\n"
        "from edge_token.core.errors import SinkError\n"
        "try:\n    write_atomic(Path(sys.argv[1]), b'new-token', 0o600)\n"
        "except SinkError as e:\n    print(e); sys.exit(3)\n"
    )
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        as_user(nobody.pw_uid, nobody.pw_gid, sys.executable, "-c", code, str(target)),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "permission denied" in result.stdout
    assert target.read_bytes() == b"old-token"
    assert [p.name for p in directory.iterdir()] == ["t.jwt"]


def test_sink_path_that_is_a_directory_is_a_specific_error(tmp_path: Path) -> None:
    """A directory where the token file should be is reported as such."""
    (tmp_path / "t.jwt").mkdir()
    with pytest.raises(SinkError, match="is a directory"):
        write_atomic(tmp_path / "t.jwt", b"x")


def test_missing_directory_says_how_to_fix(tmp_path: Path) -> None:
    """A missing sink directory names RuntimeDirectory= as the fix and leaves nothing behind."""
    with pytest.raises(SinkError, match="does not exist"):
        write_atomic(tmp_path / "absent" / "t.jwt", b"x")


def test_planted_symlink_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    """O_EXCL|O_NOFOLLOW: a symlink planted at the temp name is neither followed nor written through."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "t.jwt"
    (tmp_path / ".planted").symlink_to(victim)
    with pytest.raises(SinkError, match="already exists"):
        write_atomic(target, b"token", make_temp_name=lambda _: ".planted")
    assert victim.read_bytes() == b"precious"
    assert not target.exists()


def test_stale_temp_files_are_removed_but_nothing_else(tmp_path: Path) -> None:
    """A killed predecessor's temp files are cleaned; look-alike files of others are not touched."""
    target = tmp_path / "t.jwt"
    stale = tmp_path / temp_name(target)
    stale.write_bytes(b"half")
    other = tmp_path / ".t.jwt.backup"
    other.write_bytes(b"keep")
    assert remove_stale_temps(target) == 1
    assert not stale.exists() and other.exists()


def test_owner_and_group_are_applied(tmp_path: Path) -> None:
    """With uid/gid configured, the file is created with them (the daemon runs as root here)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    target = tmp_path / "t.jwt"
    write_atomic(target, b"x", 0o640, nobody.pw_uid, nobody.pw_gid)
    info = target.stat()
    assert (info.st_uid, info.st_gid, mode_of(target)) == (nobody.pw_uid, nobody.pw_gid, 0o640)
