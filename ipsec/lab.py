"""The IPsec lab: one network namespace per QKD node, veth links along the QKD links, one strongSwan charon per
namespace, and tenant hosts (addresses of the tenants' subnets) behind the gateways.

No Django here: ``make run`` (``portal.runstack``), the tests and the benchmarks build labs with it.

Addressing (the same in every lab; the namespaces keep labs apart):
- node ``i`` (0-based, in the order given) has the gateway address ``10.254.0.<i+1>`` on its loopback: IKE and ESP
  run between these addresses;
- QKD link ``j`` is a veth pair ``172.31.<j>.1/30 - 172.31.<j>.2/30``; static routes along the fewest-hops path
  (every namespace forwards) carry traffic between nodes that are not neighbours, as trusted nodes do;
- a tenant host is an address of the tenant's subnet on the node namespace's loopback (``add_tenant_host``).

Names carry the lab's prefix: namespaces ``<prefix>-<node>``, interfaces ``<prefix><link>a|b`` (<= 15
characters), so two labs never collide, and ``clean_stale(prefix)`` removes what a crashed run left.

charon runs with kernel-libipsec (userspace ESP through the TUN device ``ipsec0``): these machines' kernel has no
in-kernel ESP. On a host with a normal kernel, drop the ``kernel-libipsec`` section and the same configuration
runs on kernel ESP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

CHARON = "/usr/lib/ipsec/charon"
IP = shutil.which("ip") or "/usr/sbin/ip"
START_TIMEOUT_S = 10.0
FIX = ("run as root (network namespaces need CAP_NET_ADMIN) on a machine with strongSwan: "
       "apt-get install strongswan-charon libcharon-extra-plugins strongswan-swanctl iproute2")

STRONGSWAN_CONF = """\
charon {{
  load_modular = yes
  make_before_break = yes
  # the lab's gateways talk on their own addresses only; no DNS or routes of the host are touched
  install_virtual_ip = no
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{
      load = yes
      allow_peer_ts = yes
    }}
    resolve {{
      load = no
    }}
    vici {{
      socket = unix://{vici}
    }}
  }}
  filelog {{
    log {{
      path = {log}
      default = 1
      ike = 1
      esp = {esp_log}
      flush_line = yes
    }}
  }}
}}
"""


def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine (with the fix), or None."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return f"the IPsec lab needs Linux network namespaces; {FIX}"
    if os.geteuid() != 0:
        return f"the IPsec lab needs root (network namespaces); {FIX}"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if not Path(CHARON).exists():
        missing.append(CHARON)
    if missing:
        return f"the IPsec lab needs {', '.join(missing)}; {FIX}"
    return None


def run(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)  # noqa: S603


def namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_namespace(name: str) -> None:
    """Kill every process in the namespace, then delete it (its interfaces go with it)."""
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + 3
    while pids and time.monotonic() < deadline:
        pids = run("ip", "netns", "pids", name, check=False).stdout.split()
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "delete", name, check=False)


def clean_stale(prefix: str) -> list[str]:
    """Remove every namespace (and its charon) a previous lab with this prefix left behind."""
    stale = [ns for ns in namespaces() if ns.startswith(f"{prefix}-")]
    for ns in stale:
        kill_namespace(ns)
    return stale


@dataclass
class LabNode:
    node_id: str
    index: int
    netns: str
    address: str          # the gateway's outer address (IKE, ESP)
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def vici_socket(self) -> Path:
        return self.directory / "charon.vici"

    @property
    def vici_uri(self) -> str:
        return f"unix://{self.vici_socket}"

    @property
    def log_path(self) -> Path:
        return self.directory / "charon.log"


@dataclass
class Lab:
    """A running lab. ``nodes`` by node id; ``links`` as (node, node) pairs in veth order."""

    prefix: str
    directory: Path
    nodes: dict[str, LabNode] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)

    # -- running things inside ----------------------------------------------------------------------------
    def exec(self, node_id: str, *args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.nodes[node_id].netns, *args, check=check, timeout=timeout)

    def popen(self, node_id: str, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([IP, "netns", "exec", self.nodes[node_id].netns, *args], **kwargs)  # noqa: S603

    def link_interface(self, a: str, b: str) -> tuple[str, str]:
        """The veth interface in ``a``'s namespace of the link a-b (and its name in ``b``'s)."""
        for j, (x, y) in enumerate(self.links):
            if (x, y) == (a, b):
                return f"{self.prefix}{j}a", f"{self.prefix}{j}b"
            if (x, y) == (b, a):
                return f"{self.prefix}{j}b", f"{self.prefix}{j}a"
        raise KeyError(f"no link {a}-{b}")

    def path(self, a: str, b: str) -> list[str]:
        return shortest_path(self.links, a, b)

    # -- tenant hosts -------------------------------------------------------------------------------------
    def add_tenant_host(self, node_id: str, address: str) -> None:
        """A tenant host: ``address`` (one of the tenant's subnet) on the node namespace's loopback."""
        self.exec(node_id, "ip", "addr", "replace", f"{address}/32", "dev", "lo")

    def remove_tenant_host(self, node_id: str, address: str) -> None:
        self.exec(node_id, "ip", "addr", "del", f"{address}/32", "dev", "lo", check=False)

    # -- charon -------------------------------------------------------------------------------------------
    def start_charon(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.directory.mkdir(parents=True, exist_ok=True)
        conf = node.directory / "strongswan.conf"
        conf.write_text(STRONGSWAN_CONF.format(vici=node.vici_socket, log=node.log_path,
                                             esp_log=os.environ.get("IPSEC_LAB_ESP_LOG", "1")))
        node.vici_socket.unlink(missing_ok=True)
        env = {**os.environ, "STRONGSWAN_CONF": str(conf)}
        # A private mount namespace with its own /run: charon refuses to start when /run/charon.pid exists.
        node.process = subprocess.Popen(  # noqa: S603
            [IP, "netns", "exec", node.netns, "unshare", "-m", "sh", "-c",
             f"mount -t tmpfs tmpfs /run && exec {CHARON} --use-syslog no"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(node.directory / "charon.err", "ab"),  # noqa: SIM115
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"charon of {node_id} exited with {node.process.returncode}; "
                                   f"see {node.log_path}")
            if node.vici_socket.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(node.vici_socket))
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"charon of {node_id} did not open its VICI socket in {START_TIMEOUT_S:.0f} s")

    def stop_charon(self, node_id: str, sig: int = signal.SIGTERM) -> None:
        """Stop (or, with SIGKILL, kill) a node's charon."""
        node = self.nodes[node_id]
        if node.process is None or node.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, sig)
        try:
            node.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=5)
        # kernel-libipsec's TUN device and routes die with the process; the table-220 rules stay harmless.

    def charon_alive(self, node_id: str) -> bool:
        process = self.nodes[node_id].process
        return process is not None and process.poll() is None

    def stop(self) -> None:
        for node_id in self.nodes:
            self.stop_charon(node_id)
        for node in self.nodes.values():
            kill_namespace(node.netns)


def shortest_path(links: list[tuple[str, str]], a: str, b: str) -> list[str]:
    """Fewest hops from a to b along the links (ties: first neighbour in sorted order)."""
    neighbours: dict[str, list[str]] = {}
    for x, y in links:
        neighbours.setdefault(x, []).append(y)
        neighbours.setdefault(y, []).append(x)
    previous: dict[str, str | None] = {a: None}
    queue = deque([a])
    while queue:
        here = queue.popleft()
        for there in sorted(neighbours.get(here, [])):
            if there not in previous:
                previous[there] = here
                queue.append(there)
    if b not in previous:
        raise ValueError(f"no path from {a} to {b}")
    path = [b]
    while (step := previous[path[-1]]) is not None:
        path.append(step)
    return path[::-1]


def gateway_address(index: int) -> str:
    return str(ipaddress.ip_address("10.254.0.1") + index)


def build(nodes: list[str], links: list[tuple[str, str]], prefix: str, directory: Path,
          start_charons: bool = True) -> Lab:
    """Build the lab (cleaning what a crashed lab with the same prefix left first). On failure nothing stays."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if not prefix.isalnum() or len(prefix) > 10 or len(links) > 99:
        raise ValueError("prefix: up to 10 letters/digits (interface names <= 15 characters), at most 99 links")
    clean_stale(prefix)
    lab = Lab(prefix, Path(directory), links=[(a, b) for a, b in links])
    for i, node_id in enumerate(nodes):
        netns = f"{prefix}-{node_id.lower()}"
        lab.nodes[node_id] = LabNode(node_id, i, netns, gateway_address(i), lab.directory / node_id.lower())
    try:
        for node in lab.nodes.values():
            run("ip", "netns", "add", node.netns)
            lab.exec(node.node_id, "ip", "link", "set", "lo", "up")
            lab.exec(node.node_id, "ip", "addr", "add", f"{node.address}/32", "dev", "lo")
            lab.exec(node.node_id, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            lab.exec(node.node_id, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        for j, (a, b) in enumerate(lab.links):
            ia, ib = f"{prefix}{j}a", f"{prefix}{j}b"
            run("ip", "link", "add", ia, "netns", lab.nodes[a].netns, "type", "veth", "peer", "name", ib,
                "netns", lab.nodes[b].netns)
            lab.exec(a, "ip", "addr", "add", f"172.31.{j}.1/30", "dev", ia)
            lab.exec(b, "ip", "addr", "add", f"172.31.{j}.2/30", "dev", ib)
            lab.exec(a, "ip", "link", "set", ia, "up")
            lab.exec(b, "ip", "link", "set", ib, "up")
        # static routes to every other gateway address, along the fewest-hops path
        for a in lab.nodes.values():
            for b in lab.nodes.values():
                if a is b:
                    continue
                hop = lab.path(a.node_id, b.node_id)[1]
                j, side = _link_index(lab.links, a.node_id, hop)
                via = f"172.31.{j}.{2 if side == 'a' else 1}"
                lab.exec(a.node_id, "ip", "route", "add", f"{b.address}/32", "via", via, "src", a.address)
        if start_charons:
            for node_id in lab.nodes:
                lab.start_charon(node_id)
    except BaseException:
        lab.stop()
        raise
    return lab


def _link_index(links: list[tuple[str, str]], a: str, b: str) -> tuple[int, str]:
    for j, (x, y) in enumerate(links):
        if (x, y) == (a, b):
            return j, "a"
        if (x, y) == (b, a):
            return j, "b"
    raise KeyError(f"no link {a}-{b}")
