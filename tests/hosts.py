"""Hosts of their own on one machine: network namespaces on a private link, for the multi-host
test (tests/integration/test_hosts.py) and the scale-out bench (bench/scale.py).

Each host is a network namespace (`ip netns`) whose only interface is one end of a veth pair;
the other ends hang on a bridge in a hub namespace of the run's own, so the hosts reach each
other over TCP on a private /24 and nothing else. Processes run there through `ip netns exec`,
in a UTS namespace of their own too, so each host has its own hostname (Celery's `%h`, the
lease owners' host part). The root namespace's interfaces, addresses and routes are never
touched. This process joins a host with `Host.entered()` (setns(2) on the calling thread only)
to talk to the farm as a client on the link.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.helpers import FarmProcess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# Always under 10.213/16 and never routed from the root namespace; the run's pid picks the /24
# so that two runs' captures and logs are told apart (their links never meet anyway).
SUBNET = f"10.213.{os.getpid() % 250}"


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def why_no_namespaces() -> str | None:
    """Why network namespaces cannot be made here (the reason a test skips with), or None."""
    if os.geteuid() != 0:
        return "making network namespaces (ip netns add) needs root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command on this machine"
    probe = f"mfprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot make a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str  # also its hostname
    netns: str
    address: str

    def command(self, argv: Sequence[str], cpus: str | None = None) -> list[str]:
        """`argv` as run on this host (pinned to `cpus` with taskset when given)."""
        pin = ["taskset", "--cpu-list", cpus] if cpus else []
        enter = ["ip", "netns", "exec", self.netns]
        own_hostname = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name]
        return [*enter, *own_hostname, *pin, *argv]

    def start(
        self, args: list[str], env: dict[str, str], log: Path, cpus: str | None = None
    ) -> FarmProcess:
        """A `modelfarm` command on this host."""
        return FarmProcess.start(args, env, log, prefix=self.command([], cpus))

    def popen(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                self.command(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns).split()]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) its live processes have used so far, by program name."""
        used: dict[str, float] = {}
        for pid in self.pids():
            try:
                proc = psutil.Process(pid)
                name, times = proc.name(), proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            used[name] = used.get(name, 0.0) + times.user + times.system
        return used

    def signal(self, sig: signal.Signals) -> None:
        """`sig` to every process on this host (SIGSTOP: the host freezes, SIGCONT: it thaws)."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout: float = 20) -> None:
        """SIGKILL every process on this host, as a machine that loses its power."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            self.signal(signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes on {self.name} outlived SIGKILL: {pids}")
            time.sleep(0.05)

    @contextmanager
    def entered(self) -> Iterator[Host]:
        """The calling thread on this host: the sockets it opens (and the children it starts)
        are this namespace's, until the block ends."""
        own_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{self.netns}")
            try:
                yield self
            finally:
                if _libc.setns(own_fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "could not return to the first namespace")
        finally:
            os.close(own_fd)


@dataclass
class Network:
    """A private /24: a bridge in the hub namespace and one veth pair per host."""

    tag: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    @property
    def cidr(self) -> str:
        return f"{SUBNET}.0/24"

    def add(self, name: str) -> Host:
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{len(self.hosts) + 1}")
        self.hosts.append(host)  # before anything exists: close() removes what was made
        port = f"p{len(self.hosts)}"
        _ip("netns", "add", host.netns)
        veth = ["type", "veth", "peer", "name", "eth0", "netns", host.netns]
        _ip("-n", self.hub, "link", "add", port, *veth)
        _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Every process on every host killed, then the namespaces (and their links) deleted."""
        try:
            for host in self.hosts:
                if Path(f"/run/netns/{host.netns}").exists():
                    host.kill()
        finally:
            for name in [h.netns for h in self.hosts] + [self.hub]:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _remove_stale() -> None:
    """Namespaces a run left behind when it was killed outright (its pid is in their names)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(r"mf(\d+)[a-z]*-(\w+)", name)
        if match and not psutil.pid_exists(int(match.group(1))):
            Host(match.group(2), name, "").kill()
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def network(tag: str = "") -> Iterator[Network]:
    """A fresh private network, removed with all its hosts' processes however the block ends."""
    _remove_stale()
    net = Network(f"mf{os.getpid()}{tag}")
    try:
        _ip("netns", "add", net.hub)
        _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.hub, "link", "set", "br0", "up")
        yield net
    finally:
        net.close()
