"""A real dockerd and a local image for tests and benchmarks of the docker executor.

`Dockerd.start()` uses the dockerd that answers (DOCKER_HOST, else the standard socket) and leaves it
alone, or starts one of its own (always, with `own`; `pause` and `resume` stop and start that one
again, with `live_restore` its containers running on meanwhile): its data root, exec root, socket and pid file in a fresh directory,
no bridge and no iptables rules (tasks use the host's network), stopped by pid (its containers removed
first, its mounts undone, its directory deleted). `busybox_image` builds an image from Debian's
busybox-static package (`apt-get download`, `dpkg -x`, applet links, `docker import`): no registry,
named by its ID; the caller removes it. `image_with_healthcheck` builds one on it with a HEALTHCHECK of
its own (the base is local: nothing is pulled). Every command and wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Dockerd", "DockerdUnavailable", "busybox_image", "image_with_healthcheck"]

STANDARD_SOCKET = "/var/run/docker.sock"
START_SECONDS = 30.0
STOP_SECONDS = 20.0
COMMAND_SECONDS = 60.0


class DockerdUnavailable(Exception):
    """No dockerd answers and none could be started here (the reason says why)."""


class Dockerd:
    """One dockerd for a test session; see the module's description."""

    def __init__(self, *, own: bool = False, live_restore: bool = False) -> None:
        self.host = os.environ.get("DOCKER_HOST") or f"unix://{STANDARD_SOCKET}"
        self.root: Path | None = None  # the directory of the one started here
        self.process: subprocess.Popen[bytes] | None = None
        self._dockerd = "dockerd"
        self.own = own  # start one here even if one answers (for a test that stops it)
        self.live_restore = live_restore  # its containers outlive it (`--live-restore`)

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def docker(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        """`docker -H HOST ARGS...`: its stdout (an error with its stderr when it fails and `check`)."""
        result = subprocess.run(
            ["docker", "-H", self.host, *args],
            input=input,
            capture_output=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def answers(self) -> bool:
        if shutil.which("docker") is None:
            return False
        try:
            self.docker("version", "--format", "{{.Server.Version}}")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def start(self) -> Dockerd:
        if not self.own and self.answers():
            return self
        dockerd = shutil.which("dockerd") or (
            "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
        )
        if dockerd is None or shutil.which("docker") is None:
            raise DockerdUnavailable("dockerd is not installed (Debian: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise DockerdUnavailable("no dockerd answers, and starting one needs root")
        self.root = Path(tempfile.mkdtemp(prefix="thd-", dir="/tmp"))  # short: socket paths are limited
        self.host = f"unix://{self.root / 'docker.sock'}"
        self._dockerd = dockerd
        return self.resume()

    def pause(self) -> None:
        """Stop the dockerd started here (SIGTERM), keeping its directory: `resume` starts it again
        there (with live restore, its containers run on meanwhile)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(STOP_SECONDS)

    def resume(self) -> Dockerd:
        """Start the dockerd of this directory (again), and wait until it answers."""
        assert self.root is not None
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [
                    self._dockerd,
                    "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "exec"),
                    "--pidfile", str(self.root / "docker.pid"),
                    "-H", self.host,
                    "--bridge", "none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    *(["--live-restore"] if self.live_restore else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.answers():
                return self
            time.sleep(0.1)
        tail = "\n".join(self.log().splitlines()[-10:])
        self.stop()
        raise DockerdUnavailable(f"dockerd did not start within {START_SECONDS:g}s:\n{tail}")

    def log(self) -> str:
        path = self.root / "dockerd.log" if self.root else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        """Stop the dockerd started here (nothing for one that was running already)."""
        if self.process is None or self.root is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq").split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_SECONDS)
        for mount in _mounts_under(self.root):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=COMMAND_SECONDS, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.process = None

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    return sorted(points, key=len, reverse=True)


def busybox_image(dockerd: Dockerd, workdir: Path) -> str:
    """Import an image of Debian's busybox-static (sh and the applets on /bin, /etc/passwd with root and
    nobody, /tmp) into `dockerd`; its ID. Built in `workdir`, which the caller removes."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        if attempt:  # no package lists yet (a fresh machine): fetch them once, as root
            subprocess.run(
                ["apt-get", "update", "-qq"], capture_output=True, timeout=COMMAND_SECONDS * 5, check=False
            )
        download = subprocess.run(
            ["apt-get", "download", "busybox-static"],
            cwd=workdir,
            capture_output=True,
            timeout=COMMAND_SECONDS * 3,
            check=False,
        )
        if download.returncode == 0 or os.geteuid() != 0:
            break
    packages = sorted(workdir.glob("busybox-static_*.deb"))
    if not packages:
        raise RuntimeError(
            f"apt-get download busybox-static failed: {download.stderr.decode(errors='replace')}"
        )
    rootfs = workdir / "rootfs"
    subprocess.run(["dpkg", "-x", str(packages[-1]), str(rootfs)], check=True, timeout=COMMAND_SECONDS)
    busybox = rootfs / "bin" / "busybox"
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=COMMAND_SECONDS
    ).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    tar = subprocess.run(
        ["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True, timeout=COMMAND_SECONDS
    )
    return dockerd.docker("import", "-", input=tar.stdout).strip()


def image_with_healthcheck(
    dockerd: Dockerd, base: str, command: str, *, interval_s: int = 1, start_period_s: int = 0
) -> str:
    """An image on `base` (a local image ID) with `HEALTHCHECK CMD command` every `interval_s` seconds,
    unhealthy after one failure past the first `start_period_s` seconds; its ID (the caller removes it
    with `docker rmi --no-prune`, which keeps the base)."""
    options = f"--interval={interval_s}s --timeout={interval_s}s --retries=1"
    if start_period_s:  # Docker refuses a start period of 0s
        options += f" --start-period={start_period_s}s"
    dockerfile = f"FROM {base}\nHEALTHCHECK {options} CMD {command}\n"
    return dockerd.docker("build", "-q", "-", input=dockerfile.encode()).strip()
