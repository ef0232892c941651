"""A real systemd as PID 1 in systemd-nspawn, for tests/test_systemd_real.py.

The recipe is the one verified on Debian 12 hosts with cgroup v1 "hybrid" and no systemd as the host's init
(REFERENCE.md "systemd"): `tests/system/prepare.sh` unpacks a private systemd-nspawn (never installed: that
would upgrade the host's systemd) and debootstraps a minimal bookworm tree once; every test session boots a
fresh overlay of that tree, so nothing a test does survives into the next session.

Why each step:
- nspawn must start in a cgroup subtree of its own in both the named systemd hierarchy and the unified one,
  otherwise it refuses (or takes over the caller's cgroup); the shell that execs it moves itself there first.
- `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1` gives the container a pure cgroup v2 view, which systemd 252 handles best.
- `--register=no --keep-unit`: there is no host systemd/machined to talk to.
- Commands enter the container with `nsenter` into its PID 1 (the nspawn process's child): no machinectl.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PREPARE = ROOT / "tests" / "system" / "prepare.sh"
DEFAULT_CACHE = Path(os.environ.get("EDGE_TOKEN_SYSTEST_CACHE", "/var/cache/edge-token-systest"))
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable_reason(cache: Path = DEFAULT_CACHE) -> str | None:
    """Why the real-systemd test cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, overlay mounts, cgroups)"
    if not shutil.which("nsenter"):
        return "needs nsenter (util-linux)"
    for hierarchy in CGROUP_HIERARCHIES:
        if not (hierarchy / "cgroup.procs").exists():
            return f"needs the cgroup v1 hybrid layout this recipe was verified on ({hierarchy} missing)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs"
    if not (cache / "nspawn" / "usr" / "bin" / "systemd-nspawn").exists() or not trees(cache):
        return f"not prepared: run `sudo bash {PREPARE.relative_to(ROOT)}` first (Debian 12, ~1 min, apt only)"
    return None


def trees(cache: Path = DEFAULT_CACHE) -> list[Path]:
    return sorted(p for p in cache.glob("tree-*") if (p / ".complete").exists())


def sweep_abandoned() -> None:
    """Clean up after a test session that was killed outright (SIGKILL, a lost terminal) and could not run its
    own cleanup: its nspawn (own session, so still running), overlay mount, cgroups and files."""
    for work in Path("/var/tmp").glob("edge-token-systest-*"):
        try:
            owner, name = (work / "owner").read_text().split()
        except (FileNotFoundError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue  # a live session (maybe a concurrent run): not ours to touch
        try:
            nspawn = int((work / "nspawn.pid").read_text())
            if "systemd-nspawn" in Path(f"/proc/{nspawn}/cmdline").read_text():
                os.killpg(nspawn, signal.SIGKILL)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass
        remove_cgroups(name)
        subprocess.run(["umount", "--lazy", str(work / "root")], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def remove_cgroups(name: str, timeout: float = 10.0) -> None:
    """SIGKILL whatever still runs in the machine's cgroups (a container whose nspawn was killed keeps running:
    killing its PID 1 ends the whole PID namespace), then remove the directories."""
    deadline = time.monotonic() + timeout
    while pids := {int(p) for f in (CGROUP_HIERARCHIES[0] / name).rglob("cgroup.procs") for p in f.read_text().split()}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(pids)} in cgroup {name} survive SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for hierarchy in CGROUP_HIERARCHIES:
        top = hierarchy / name
        if top.exists():  # nspawn leaves payload/ and supervisor/ below: remove depth first
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                path.rmdir()
            top.rmdir()


class Machine:
    """One booted container: an overlay over the cached tree, nspawn in its own cgroup, PID 1 = systemd."""

    def __init__(self, cache: Path = DEFAULT_CACHE) -> None:
        sweep_abandoned()
        self.cache = cache
        self.tree = trees(cache)[-1]
        self.name = f"etst-{os.getpid()}"
        self.work = Path(tempfile.mkdtemp(prefix="edge-token-systest-", dir="/var/tmp"))
        self.root = self.work / "root"
        self.log = self.work / "nspawn.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self.boots = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def boot(self, timeout: float = 60.0) -> None:
        """Start the container (again, on the same overlay) and wait until systemd reports the system running."""
        if not os.path.ismount(self.root):
            for sub in ("upper", "ovl-work", "root"):
                (self.work / sub).mkdir(exist_ok=True)
            options = f"lowerdir={self.tree},upperdir={self.work / 'upper'},workdir={self.work / 'ovl-work'}"
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=True)
        for hierarchy in CGROUP_HIERARCHIES:
            (hierarchy / self.name).mkdir(exist_ok=True)
        nspawn_root = self.cache / "nspawn"
        env = {
            "PATH": os.environ.get("PATH", CONTAINER_PATH),
            "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
            "LD_LIBRARY_PATH": str(nspawn_root / "usr/lib/x86_64-linux-gnu/systemd"),
        }
        # The shell moves itself into the machine's own cgroups, then becomes nspawn (same pid).
        moves = "; ".join(f'echo $$ > "{h / self.name}/cgroup.procs"' for h in CGROUP_HIERARCHIES)
        command = [
            str(nspawn_root / "usr/bin/systemd-nspawn"),
            *("-D", str(self.root), "-b", "--register=no", "--keep-unit", "--private-network"),
            *("--console=passive", "-M", self.name),
        ]
        (self.work / "owner").write_text(f"{os.getpid()} {self.name}")
        with self.log.open("ab") as log:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", f'{moves}; exec "$@"', "sh", *command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.boots += 1
        (self.work / "nspawn.pid").write_text(str(self.nspawn.pid))
        deadline = time.monotonic() + timeout
        self.pid1 = 0
        while not self.pid1:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no container PID 1 after {timeout} s: {self.log.read_text()}")
            self.pid1 = self._pid1()
            time.sleep(0.05)
        # Right after PID 1 appears its bus may not listen yet ("Failed to connect to bus"): empty answer, retry.
        state = ""
        while not state and time.monotonic() < deadline:
            state = self.run("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()
            time.sleep(0 if state else 0.1)
        if state != "running":
            failed = self.run("systemctl --failed --no-legend", check=False).stdout
            raise RuntimeError(f"container booted {state!r}; failed units: {failed}")

    def _pid1(self) -> int:
        assert self.nspawn is not None
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
        except FileNotFoundError:
            return 0
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except FileNotFoundError:
                continue
        return 0

    def poweroff(self, timeout: float = 60.0) -> None:
        """A clean shutdown: SIGTERM to nspawn makes it ask the container's systemd to power off."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(10)
        self.pid1 = 0

    def cleanup(self) -> None:
        """Power off, unmount, remove the cgroup subtrees and the overlay: also after a failed test."""
        try:
            self.poweroff()
        finally:
            remove_cgroups(self.name)
            if os.path.ismount(self.root):
                subprocess.run(["umount", "--lazy", str(self.root)], check=False)
            propagate = Path("/run/systemd/nspawn/propagate") / self.name
            if propagate.is_dir() and not any(propagate.iterdir()):
                propagate.rmdir()
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- commands inside -------------------------------------------------------------------------------------
    def run(
        self,
        script: str,
        *,
        check: bool = True,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        cwd: str = "/root",
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root inside the container, with a clean environment (not the host's)."""
        command = self._command(script, env, cwd)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"in container: exit {result.returncode}\n--- script\n{script}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}"
            )
        return result

    def popen(self, script: str, *, env: dict[str, str] | None = None, cwd: str = "/root") -> subprocess.Popen[str]:
        """Start a bash script inside the container without waiting (e.g. a blocking `systemctl start`)."""
        command = self._command(script, env, cwd)
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _command(self, script: str, env: dict[str, str] | None, cwd: str) -> list[str]:
        environment = {"PATH": CONTAINER_PATH, "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", **(env or {})}
        command = ["nsenter", "-t", str(self.pid1), "-a", "--", "env", "-i"]
        command += [f"{key}={value}" for key, value in environment.items()]
        return [*command, "bash", "-euo", "pipefail", "-c", f'cd "{cwd}"\n{script}']

    def path(self, inside: str) -> Path:
        """The host path of a file inside the (running or stopped) container's root."""
        return self.root / inside.lstrip("/")
