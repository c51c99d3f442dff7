"""Managed TLS 1.3 endpoints: a pair of stunnel daemons (Debian ``stunnel4``) per session, keyed by a QKD PSK.

Plain Python, no Django: the worker side (``tls.services``) drives it, and so can a test or a benchmark.

One session is one private directory ``<root>/<name>/`` (mode 0700; ``root`` is 0700 too) holding:

- ``server.conf`` / ``client.conf``: stunnel configurations. The server endpoint runs at node B and accepts
  TLS on ``server_port``, forwarding plaintext to the target; the client endpoint runs at node A, accepts the
  tenant's plaintext on ``client_port`` and originates TLS to B. TLS 1.3 only, external PSK with (EC)DHE
  kept (OpenSSL negotiates psk_dhe_ke for an external PSK; the group is X25519), no session tickets (every
  connection authenticates with the external PSK, so the identity it used is the QKD key ID).
- ``server.psk`` / ``client.psk``: ``identity:hexkey`` lines, mode 0600 (the client sends its first one).
  The only place a key lives. stunnel reads them from its configuration, so a key is never in process
  arguments or the environment.
- ``server.pid`` / ``client.pid``, ``server.log`` / ``client.log`` (stunnel's own, no key material),
  ``spec.json`` (ports, target; no secret): enough for a new worker process to find, check, restart or stop
  the daemons after a restart.

Rotation is hitless: the server's PSK file first holds the new identity *and* the old ones, the server
reloads (SIGHUP: stunnel re-reads its configuration; established connections keep their TLS state), then the
client's file holds only the new identity and the client reloads: new connections use the new key,
established ones finish on the old. ``retire`` drops the old identities from the server after a grace period.

Where: loopback by default. A ``Node`` may name a network namespace (``ip netns exec``) and an address, the
hook for running endpoints inside the lab's node namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STUNNEL = os.environ.get("TLS_STUNNEL_BINARY", "stunnel4")
ROLES = ("server", "client")
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 3.0
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLOSED_RE = re.compile(rb"Connection closed: (\d+) byte\(s\) sent to TLS, (\d+) byte\(s\) sent to socket")


class EndpointError(Exception):
    """An endpoint could not be started, reloaded or stopped."""


@dataclass(frozen=True)
class Node:
    """Where an endpoint runs: an address to listen on/connect to and, optionally, a network namespace."""

    address: str = "127.0.0.1"
    netns: str | None = None


@dataclass(frozen=True)
class PairSpec:
    name: str
    client_port: int
    server_port: int
    target_host: str
    target_port: int
    client_node: Node = field(default_factory=Node)
    server_node: Node = field(default_factory=Node)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PairSpec:
        raw = json.loads(text)
        raw["client_node"], raw["server_node"] = Node(**raw["client_node"]), Node(**raw["server_node"])
        return cls(**raw)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise EndpointError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, mode 0600 from its creation (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _psk_line(identity: str, key: bytes) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", identity):
        raise EndpointError("a PSK identity must be a plain token (a key ID)")
    if len(key) < 16:
        raise EndpointError("a PSK must be at least 128 bits")
    return f"{identity}:{key.hex()}\n"


class Supervisor:
    """The managed endpoints under ``root``: start, rotate, check, restart and stop session pairs."""

    def __init__(self, root: Path | str, stunnel: str = STUNNEL) -> None:
        self.root = Path(root)
        self.stunnel = shutil.which(stunnel) or shutil.which("stunnel") or stunnel
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    # -- paths and state ---------------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name):
            raise EndpointError(f"bad session name {name!r}")
        return self.root / name

    def spec(self, name: str) -> PairSpec:
        return PairSpec.from_json((self.dir(name) / "spec.json").read_text())

    def names(self) -> list[str]:
        """Every session with a directory here (live or left over)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name))

    def pid(self, name: str, role: str) -> int | None:
        """The pid of the role's stunnel if it is running *our* daemon (its command line names our config)."""
        d = self.dir(name)
        try:
            pid = int((d / f"{role}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(d / f"{role}.conf").encode() in cmdline else None

    def alive(self, name: str) -> dict[str, bool]:
        return {role: self.pid(name, role) is not None for role in ROLES}

    # -- configuration -----------------------------------------------------------------------------------
    def _conf(self, spec: PairSpec, role: str) -> str:
        d = self.dir(spec.name)
        # syslog = no: without a /dev/log, stunnel's syslog writes each line to /dev/console (opened per line:
        # ~15 ms per handshake measured); its own log file is enough.
        # The client logs each connection's bytes at "notice" (rotation by bytes reads them); the server logs
        # warnings only, which keeps its handshakes free of per-connection log writes.
        level = "notice" if role == "client" else "warning"
        common = [f"pid = {d / (role + '.pid')}", f"output = {d / (role + '.log')}", "syslog = no",
                  "foreground = no", f"debug = {level}", "[qkd]"]
        # TCP_NODELAY on both sockets: without it Nagle and delayed ACKs held small requests ~20 ms per hop.
        tls = ["socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", "sslVersionMin = TLSv1.3", "ciphers = PSK",
               "curves = X25519", "options = NO_TICKET", f"PSKsecrets = {d / (role + '.psk')}"]
        if role == "server":
            body = [f"accept = {spec.server_node.address}:{spec.server_port}",
                    f"connect = {spec.target_host}:{spec.target_port}"]
        else:
            body = ["client = yes", f"accept = {spec.client_node.address}:{spec.client_port}",
                    f"connect = {spec.server_node.address}:{spec.server_port}"]
        return "\n".join([*common, *body, *tls]) + "\n"

    def _server_identities(self, name: str) -> list[tuple[str, str]]:
        path = self.dir(name) / "server.psk"
        lines = path.read_text().splitlines() if path.exists() else []
        return [tuple(line.split(":", 1)) for line in lines if ":" in line]  # type: ignore[misc]

    # -- processes ---------------------------------------------------------------------------------------
    def _command(self, node: Node, conf: Path) -> list[str]:
        cmd = [self.stunnel, str(conf)]  # the configuration's path only: no secret in the arguments
        return ["ip", "netns", "exec", node.netns, *cmd] if node.netns else cmd

    def _launch(self, name: str, role: str) -> None:
        spec, d = self.spec(name), self.dir(name)
        node = spec.server_node if role == "server" else spec.client_node
        port = spec.server_port if role == "server" else spec.client_port
        (d / f"{role}.pid").unlink(missing_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}  # nothing inherited
        listener = None if node.netns else _listen(node.address, port)
        try:
            if listener is None:
                cmd, fds = self._command(node, d / f"{role}.conf"), ()
            else:
                # stunnel takes a listening socket handed over the systemd way (LISTEN_FDS, LISTEN_PID, fd 3)
                # and never closes it on reload, where a socket of its own is closed and bound again: the
                # connections arriving in between would be refused or reset (measured: 66 failed requests in
                # 8 rotations). bash (dash takes one-digit fds only) becomes stunnel (exec): $$ is stunnel's pid.
                n = listener.fileno()
                move = "" if n == 3 else f" 3<&{n} {n}<&-"
                cmd = ["/bin/bash", "-c", f'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"{move}', self.stunnel,
                       str(d / f"{role}.conf")]
                fds = (n,)
            # stunnel daemonizes once its configuration is valid; our binary, our config path (S603).
            done = subprocess.run(cmd, env=env, pass_fds=fds, capture_output=True, timeout=10,  # noqa: S603
                                  check=False)
        finally:
            if listener is not None:
                listener.close()  # the daemon holds it now
        if done.returncode != 0:
            raise EndpointError(f"the {role} endpoint did not start: "
                                f"{done.stderr.decode(errors='replace').strip()[-300:]}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.pid(name, role) is not None and (node.netns or listening(node.address, port)):
                return
            time.sleep(0.02)
        raise EndpointError(f"the {role} endpoint did not come up on {node.address}:{port}")

    def _signal(self, name: str, role: str, sig: int) -> bool:
        pid = self.pid(name, role)
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    # -- the lifecycle -----------------------------------------------------------------------------------
    def start(self, spec: PairSpec, identity: str, key: bytes) -> None:
        """Write the session's files and start server then client. On failure nothing is left running."""
        d = self.dir(spec.name)
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        line = _psk_line(identity, key)
        try:
            _write_private(d / "spec.json", spec.to_json())
            _write_private(d / "server.psk", line)
            _write_private(d / "client.psk", line)
            _write_private(d / "server.conf", self._conf(spec, "server"))
            _write_private(d / "client.conf", self._conf(spec, "client"))
            for role in ROLES:
                self._launch(spec.name, role)
        except Exception:
            self.stop(spec.name)
            raise

    def rotate(self, name: str, identity: str, key: bytes) -> None:
        """Make ``identity`` the key of new connections; the server keeps accepting the old identities (until
        ``retire``), so connections set up just before the client reloads still succeed."""
        d = self.dir(name)
        line = _psk_line(identity, key)
        old = [f"{i}:{k}\n" for i, k in self._server_identities(name) if i != identity]
        _write_private(d / "server.psk", line + "".join(old))
        if not self._signal(name, "server", signal.SIGHUP):
            self._launch(name, "server")
        # The client's configuration stays the same (it sends the first identity of its PSK file): stunnel then
        # keeps its listening socket across the reload, where a changed configuration would re-bind it and
        # refuse or reset the connections arriving meanwhile (measured: 70 failed requests in 5 rotations).
        _write_private(d / "client.psk", line)
        # stunnel reloads before it answers the next accept; a short wait lets the server reload first.
        time.sleep(0.05)
        if not self._signal(name, "client", signal.SIGHUP):
            self._launch(name, "client")

    def retire(self, name: str, keep: list[str]) -> list[str]:
        """Remove every server identity not in ``keep`` (the grace period of the old keys is over)."""
        d = self.dir(name)
        entries = self._server_identities(name)
        kept = [(i, k) for i, k in entries if i in keep]
        removed = [i for i, _ in entries if i not in keep]
        if removed and kept:
            _write_private(d / "server.psk", "".join(f"{i}:{k}\n" for i, k in kept))
            self._signal(name, "server", signal.SIGHUP)
        return removed

    def server_identities(self, name: str) -> list[str]:
        return [i for i, _ in self._server_identities(name)]

    def restart_dead(self, name: str) -> list[str]:
        """Start again each endpoint whose daemon is gone; returns the roles restarted."""
        restarted = []
        for role in ROLES:
            if self.pid(name, role) is None:
                self._launch(name, role)
                restarted.append(role)
        return restarted

    def bytes_through(self, name: str) -> int:
        """Bytes carried by the client endpoint's finished connections (from stunnel's log; no secret there)."""
        path = self.dir(name) / "client.log"
        try:
            data = path.read_bytes()
        except OSError:
            return 0
        return sum(int(a) + int(b) for a, b in CLOSED_RE.findall(data))

    def stop(self, name: str) -> None:
        """Stop both daemons and remove every file of the session (keys included)."""
        d = self.dir(name)
        pids = [p for role in ROLES if (p := self.pid(name, role)) is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False
