"""A small driver for a strongSwan charon over VICI (the PyPI ``vici`` package, strongSwan's own binding).

One short session per call (a VICI session is not thread-safe and a charon may restart between calls). Key
material (PPKs) enters charon through ``load_shared`` only: it is never logged, and the errors raised here never
contain it.

Conventions for a tunnel called ``name`` (``qx-<order uuid>``): the connection and its CHILD config are both
``name``; its PPK ID is ``qkd-<order uuid>``, loaded under the shared-secret id ``ppk-<name>`` (one id per
tunnel whose secret a re-key replaces: see docs/ipsec.md for why this is hitless).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import vici
from vici.exception import CommandException, SessionException

CONNECT_TIMEOUT_S = 3.0
IKE_PROPOSALS = ["aes256-sha256-modp3072"]  # gmp (Debian's default plugins): no ECP/x25519 needed


class GatewayUnavailable(Exception):
    """The charon cannot be reached (dead daemon, wrong URI)."""


class GatewayError(Exception):
    """charon refused a command (the message is charon's, never key material)."""


@dataclass(frozen=True)
class SaState:
    """What list-sas says about one tunnel's IKE SA (the newest one when a re-authentication overlaps)."""

    name: str
    ike_id: str
    state: str
    ppk: bool
    established_s: int
    child_state: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    ike_sas: int            # how many IKE SAs the tunnel has now (2 during make-before-break)

    @property
    def up(self) -> bool:
        return self.state == "ESTABLISHED" and self.child_state == "INSTALLED"


def _connect(uri: str) -> socket.socket:
    if uri.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX)
        target: Any = uri.removeprefix("unix://")
    elif uri.startswith("tcp://"):
        host, _, port = uri.removeprefix("tcp://").rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        target = (host.strip("[]"), int(port))
    else:
        raise GatewayUnavailable(f"unsupported VICI URI {uri!r} (unix:///path or tcp://host:port)")
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise GatewayUnavailable(f"charon at {uri} is not reachable: {exc.strerror or exc}") from None
    return sock


@contextmanager
def session(uri: str) -> Iterator[vici.Session]:
    sock = _connect(uri)
    try:
        yield vici.Session(sock)
    except (SessionException, OSError) as exc:
        raise GatewayUnavailable(f"charon at {uri} dropped the session: {exc}") from None
    except CommandException as exc:
        raise GatewayError(str(exc)) from None
    finally:
        sock.close()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conn_name(order_uuid: Any) -> str:
    return f"qx-{order_uuid}"


def ppk_id(order_uuid: Any) -> str:
    return f"qkd-{order_uuid}"


def _ppk_secret_id(name: str) -> str:
    return f"ppk-{name}"


# -- credentials --------------------------------------------------------------------------------------------
def load_credentials(uri: str, *, ca_pem: str, key_pem: str) -> None:
    """The CA that signs every gateway certificate and this gateway's private key (its certificate goes with
    each connection)."""
    with session(uri) as s:
        s.load_cert({"type": "X509", "flag": "CA", "data": ca_pem})
        s.load_key({"type": "any", "data": key_pem})


def has_private_key(uri: str) -> bool:
    """Whether a private key was loaded over VICI (a restarted charon has none)."""
    with session(uri) as s:
        return bool(s.get_keys().get("keys"))


def algorithms(uri: str) -> set[str]:
    """The algorithm plugins' names this charon has (e.g. ``AES_GCM_16``), to check ESP proposals."""
    with session(uri) as s:
        found = s.get_algorithms()
    names = set()
    for family in found.values():
        names.update(_s(k) for k in family)
    return names


# -- a tunnel -----------------------------------------------------------------------------------------------
def load_tunnel(uri: str, name: str, *, local_addr: str, remote_addr: str, local_ts: str, remote_ts: str,
                esp_proposal: str, ppk: str, cert_pem: str, peer_cert_pem: str, local_id: str | None = None,
                remote_id: str | None = None, start_action: str = "none") -> None:
    """The connection, authenticated by certificates (ids: the tunnel's own, else the gateways' addresses), with
    the QKD key as an RFC 8784 PPK that must be used (``ppk_required``). No automatic rekey or reauth: the portal
    re-keys with a fresh QKD key itself; ``unique = never`` lets the make-before-break SA overlap the old one."""
    conn = {
        "version": "2", "local_addrs": [local_addr], "remote_addrs": [remote_addr], "proposals": IKE_PROPOSALS,
        "ppk_id": ppk, "ppk_required": "yes", "reauth_time": "0", "rekey_time": "0", "unique": "never",
        "dpd_delay": "2s", "keyingtries": "1", "send_certreq": "no",
        # Both certificates are loaded on both sides, so none travels in IKE_AUTH: the response fits one packet
        # (no IKE fragments) and the initiator installs the new CHILD SA sooner (docs/ipsec.md, the re-key race).
        "local": {"auth": "pubkey", "id": local_id or local_addr, "certs": [cert_pem]},
        "remote": {"auth": "pubkey", "id": remote_id or remote_addr, "certs": [peer_cert_pem]},
        "children": {name: {"local_ts": [local_ts], "remote_ts": [remote_ts], "esp_proposals": [esp_proposal],
                            "mode": "tunnel", "rekey_time": "0", "life_time": "0", "start_action": start_action,
                            "dpd_action": "clear", "close_action": "none"}},
    }
    with session(uri) as s:
        s.load_conn({name: conn})


def load_ppk(uri: str, name: str, ppk: str, key: bytes) -> None:
    """Load (or replace: same secret id) the tunnel's PPK. ``key`` is key material: it goes to charon only."""
    with session(uri) as s:
        s.load_shared({"id": _ppk_secret_id(name), "type": "PPK", "data": key, "owners": [ppk]})


def initiate(uri: str, name: str, timeout_s: float = 10.0) -> None:
    with session(uri) as s:
        try:
            for _log in s.initiate({"child": name, "ike": name, "timeout": int(timeout_s * 1000), "loglevel": 0}):
                pass
        except CommandException as exc:
            raise GatewayError(f"initiating {name} failed: {exc}") from None


def list_sas(uri: str) -> dict[str, SaState]:
    """The tunnels this charon has IKE SAs for, by connection name (newest IKE SA of each; counters summed over
    its CHILD SAs)."""
    with session(uri) as s:
        raw = list(s.list_sas())
    grouped: dict[str, list[tuple[str, dict]]] = {}
    for entry in raw:
        for conn, sa in entry.items():
            grouped.setdefault(_s(conn), []).append((_s(sa.get("uniqueid", "0")), sa))
    out = {}
    for conn, sas in grouped.items():
        established = [(i, sa) for i, sa in sas if _s(sa.get("state")) == "ESTABLISHED"]
        ike_id, sa = max(established or sas, key=lambda pair: int(pair[0]))
        children = list((sa.get("child-sas") or {}).values())
        installed = [c for c in children if _s(c.get("state")) == "INSTALLED"]
        totals = {k: sum(int(_s(c.get(k, 0))) for c in children) for k in
                  ("bytes-in", "bytes-out", "packets-in", "packets-out")}
        out[conn] = SaState(conn, ike_id, _s(sa.get("state")), _s(sa.get("ppk", "no")) == "yes",
                            int(_s(sa.get("established", 0))), "INSTALLED" if installed else
                            (_s(children[0].get("state")) if children else "NONE"),
                            totals["bytes-in"], totals["bytes-out"], totals["packets-in"], totals["packets-out"],
                            len(sas))
    return out


def list_conns(uri: str) -> set[str]:
    with session(uri) as s:
        return {_s(name) for entry in s.list_conns() for name in entry}


def shared_ids(uri: str) -> set[str]:
    with session(uri) as s:
        return {_s(k) for k in s.get_shared().get("keys", [])}


def reauthenticate(uri: str, name: str, old_ike_id: str, timeout_s: float = 15.0) -> SaState:
    """Re-authenticate the tunnel's IKE SA make-before-break (``make_before_break = yes`` in strongswan.conf):
    charon builds a new IKE SA with the (already replaced) PPK and its CHILD SA first, then deletes the old one.
    Returns the new SA once it is up and the old one is gone."""
    with session(uri) as s:
        s.rekey({"ike-id": old_ike_id, "reauth": "yes"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sa = list_sas(uri).get(name)
        if sa and sa.ike_id != old_ike_id and sa.up and sa.ike_sas == 1:
            return sa
        time.sleep(0.05)
    raise GatewayError(f"re-authentication of {name} did not complete in {timeout_s:.0f} s")


def terminate(uri: str, name: str, timeout_s: float = 5.0) -> None:
    """Close every IKE SA of the connection (nothing to do when there is none)."""
    with session(uri) as s:
        try:
            for _log in s.terminate({"ike": name, "timeout": int(timeout_s * 1000), "loglevel": 0, "force": "yes"}):
                pass
        except CommandException as exc:
            if "no matching SAs" not in str(exc):
                raise GatewayError(f"terminating {name} failed: {exc}") from None


def unload(uri: str, name: str) -> None:
    """Remove the connection and its PPK (missing ones are not an error: unload is idempotent)."""
    with session(uri) as s:
        for command, arg in ((s.unload_conn, {"name": name}), (s.unload_shared, {"id": _ppk_secret_id(name)})):
            with suppress(CommandException):
                command(arg)


def remove(uri: str, name: str) -> None:
    """Terminate and unload: after this the gateway holds nothing of the tunnel."""
    terminate(uri, name)
    unload(uri, name)


def holds(uri: str, name: str) -> bool:
    """Whether the gateway still has anything of the tunnel (connection, SA or PPK)."""
    return (name in list_conns(uri) or name in list_sas(uri) or _ppk_secret_id(name) in shared_ids(uri))
