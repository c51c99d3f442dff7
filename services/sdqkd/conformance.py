"""An ETSI GS QKD 014 V1.1.1 (and 004 V2.1.1) conformance probe for any KME or key-delivery gateway over HTTPS.

Operators run it against a vendor's KME before registering it, and the test suite runs it against the twin's
KMEs and the portal's own ETSI 014 listener. It only uses what the standard gives a client: SAE client
certificates, the three calls, GET and POST. Each check says what it expected and what it got; a check that
needs something the target does not offer (multicast, a third SAE) is reported as skipped, not passed.

    python -m services.sdqkd.conformance --base-url https://kme-a.example:443 --ca ca.crt \\
        --master sae-a:sae-a.crt:sae-a.key --slave sae-b:sae-b.crt:sae-b.key \\
        [--extra-slave sae-c:sae-c.crt:sae-c.key] [--outsider sae-d:sae-d.crt:sae-d.key]

``--slave-base-url`` names the slave's KME when it is another node (``dec_keys`` is asked there). Every key the
probe draws is consumed; it never prints key material, only key IDs and sizes.

``--etsi004-url`` (with ``--etsi004-slave-url`` for the slave's KME) adds the ETSI 004 checks against the REST
binding of the Madrid SD-QKD stack (``<url>/open_connect``, ``/get_key``, ``/close``; e.g.
``https://kme-a:443/api``): open, join, get_key by index, close, the statuses and the QoS counter-proposal.

Where the standard fixes something it is checked to the letter (the messages of its error tables, 401 for an
SAE the key request did not name, only 200/400/401/503 on the 014 paths, ``null`` optional fields as absent);
where it leaves a choice to the KME (refusing or serving a size that is not a multiple of 8) both are accepted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from . import etsi004_spec as e004
from . import etsi014_spec as e014

STATUS_FIELDS = {
    "source_KME_ID": str, "target_KME_ID": str, "master_SAE_ID": str, "slave_SAE_ID": str, "key_size": int,
    "stored_key_count": int, "max_key_count": int, "max_key_per_request": int, "max_key_size": int,
    "min_key_size": int, "max_SAE_ID_count": int,
}


class Skip(Exception):  # a verdict, not an error
    """The target does not offer what this check needs."""


class Failure(AssertionError):
    """The target broke a rule of the standard."""


@dataclass(frozen=True)
class SaeIdentity:
    """An SAE as a client of its KME: its ID and its client certificate and key (PEM files)."""

    sae_id: str
    cert: str | None = None
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a gateway's Bearer token instead of a certificate

    @classmethod
    def parse(cls, spec: str) -> SaeIdentity:
        sae_id, cert, key = spec.split(":", 2)
        return cls(sae_id, cert, key)


@dataclass(frozen=True)
class ProbeTarget:
    """What the probe talks to. ``base_url`` is the master's KME; ``slave_base_url`` the slave's (default: same)."""

    base_url: str
    ca: str | bool
    master: SaeIdentity
    slave: SaeIdentity
    extra_slave: SaeIdentity | None = None
    outsider: SaeIdentity | None = None
    slave_base_url: str | None = None
    extra_slave_base_url: str | None = None  # default: the slave's KME
    timeout_s: float = 20.0
    etsi004_url: str | None = None  # the master's ETSI 004 REST base (".../api"); None: the 004 checks skip
    etsi004_slave_url: str | None = None  # the slave's (default: the master's)
    exhaust_attempts: int = 40  # requests of the largest batch the exhaustion check makes at most


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: str  # "pass" | "fail" | "skip"
    detail: str = ""


class Probe:
    def __init__(self, target: ProbeTarget) -> None:
        self.t = target
        self._sessions: dict[str, requests.Session] = {}
        self._status: dict[str, Any] | None = None
        self.stray: list[str] = []  # 014 answers with a status the standard does not list

    # -- plumbing -------------------------------------------------------------------------------------------
    def session(self, sae: SaeIdentity | None) -> requests.Session:
        name = sae.sae_id if sae else ""
        if name not in self._sessions:
            s = requests.Session()
            s.trust_env = False  # REQUESTS_CA_BUNDLE would silently replace the CA
            s.verify = self.t.ca
            if sae is not None:
                if sae.cert:
                    s.cert = (sae.cert, sae.key) if sae.key else sae.cert
                s.headers.update(sae.headers)
            self._sessions[name] = s
        return self._sessions[name]

    def url(self, sae: SaeIdentity, path: str) -> str:
        base = self.t.base_url
        if sae == self.t.slave and self.t.slave_base_url:
            base = self.t.slave_base_url
        if sae == self.t.extra_slave:
            base = self.t.extra_slave_base_url or self.t.slave_base_url or base
        if sae == self.t.outsider and self.t.slave_base_url:
            base = self.t.slave_base_url  # the outsider asks where the slave would
        return f"{base.rstrip('/')}/api/v1/keys/{path}"

    def call(self, sae: SaeIdentity | None, method: str, path: str, **kwargs: Any) -> requests.Response:
        caller = sae or self.t.master
        r = self.session(sae).request(method, self.url(caller, path), timeout=self.t.timeout_s, **kwargs)
        if r.status_code not in e014.STATUSES:
            self.stray.append(f"{method} {path.split('/')[-1]}: {r.status_code}")
        return r

    def call004(self, sae: SaeIdentity, op: str, method: str = "POST", **kwargs: Any) -> requests.Response:
        base = self.t.etsi004_url
        if sae == self.t.slave and self.t.etsi004_slave_url:
            base = self.t.etsi004_slave_url
        if base is None:
            raise Skip("no ETSI 004 URL given")
        return self.session(sae).request(method, f"{base.rstrip('/')}/{op}", timeout=self.t.timeout_s, **kwargs)

    def status(self) -> dict[str, Any]:
        if self._status is None:
            r = self.call(self.t.master, "GET", f"{self.t.slave.sae_id}/status")
            expect(r.status_code == 200, f"status answered {r.status_code}: {r.text[:200]}")
            self._status = r.json()
        return self._status

    def enc(self, method: str = "POST", slave: SaeIdentity | None = None, **params: Any) -> requests.Response:
        slave_id = (slave or self.t.slave).sae_id
        if method == "GET":
            return self.call(self.t.master, "GET", f"{slave_id}/enc_keys", params=params)
        return self.call(self.t.master, "POST", f"{slave_id}/enc_keys", json=params)

    def dec(self, sae: SaeIdentity, key_ids: list[str], method: str = "POST", master_id: str | None = None):
        master_id = master_id or self.t.master.sae_id
        if method == "GET":
            return self.call(sae, "GET", f"{master_id}/dec_keys", params={"key_ID": key_ids[0]})
        return self.call(sae, "POST", f"{master_id}/dec_keys", json={"key_IDs": [{"key_ID": k} for k in key_ids]})

    def keys(self, response: requests.Response, number: int, size_bits: int) -> list[dict[str, Any]]:
        """The key container of a successful answer, checked against the standard's data format."""
        expect(response.status_code == 200, f"expected 200, got {response.status_code}: {response.text[:200]}")
        expect_json(response)
        container = response.json()
        keys = container.get("keys")
        expect(isinstance(keys, list), f"no 'keys' array in {list(container)}")
        expect(len(keys) == number, f"asked for {number} keys, got {len(keys)}")
        for key in keys:
            expect(is_uuid(key.get("key_ID")), f"key_ID {key.get('key_ID')!r} is not a UUID string")
            try:
                raw = base64.b64decode(key.get("key", ""), validate=True)
            except (binascii.Error, TypeError) as exc:
                raise Failure(f"key of {key.get('key_ID')} is not base64: {exc}") from None
            expect(len(raw) * 8 == size_bits, f"asked for {size_bits}-bit keys, got {len(raw) * 8} bits")
        ids = [k["key_ID"] for k in keys]
        expect(len(set(ids)) == len(ids), "duplicate key_IDs in one container")
        return keys

    # -- checks ------------------------------------------------------------------------------------------------
    def check_status_fields(self) -> None:
        s = self.status()
        for name, kind in STATUS_FIELDS.items():
            expect(name in s, f"status lacks {name}")
            expect(isinstance(s[name], kind) and not isinstance(s[name], bool), f"status {name} is not {kind.__name__}")
        expect(s["master_SAE_ID"] == self.t.master.sae_id, f"master_SAE_ID {s['master_SAE_ID']!r}")
        expect(s["slave_SAE_ID"] == self.t.slave.sae_id, f"slave_SAE_ID {s['slave_SAE_ID']!r}")
        expect(s["min_key_size"] <= s["key_size"] <= s["max_key_size"], "key_size outside [min_key_size, max]")
        expect(s["max_key_per_request"] >= 1 and s["max_SAE_ID_count"] >= 0, "limits out of range")

    def check_default_request_get(self) -> None:
        self.keys(self.enc("GET"), 1, self.status()["key_size"])

    def check_default_request_post_empty_body(self) -> None:
        r = self.call(self.t.master, "POST", f"{self.t.slave.sae_id}/enc_keys")  # no body at all
        self.keys(r, 1, self.status()["key_size"])

    def check_number_and_size(self) -> None:
        s = self.status()
        size = max(s["min_key_size"], min(1024, s["max_key_size"])) // 8 * 8
        number = min(3, s["max_key_per_request"])
        self.keys(self.enc("GET", number=number, size=size), number, size)
        self.keys(self.enc("POST", number=number, size=size), number, size)

    def check_round_trip_post(self) -> None:
        keys = self.keys(self.enc("POST", number=2), 2, self.status()["key_size"])
        peer = self.keys(self.dec(self.t.slave, [k["key_ID"] for k in keys]), 2, self.status()["key_size"])
        expect(by_id(peer) == by_id(keys), "dec_keys returned different key material than enc_keys")

    def check_round_trip_get(self) -> None:
        keys = self.keys(self.enc("GET"), 1, self.status()["key_size"])
        peer = self.keys(self.dec(self.t.slave, [keys[0]["key_ID"]], method="GET"), 1, self.status()["key_size"])
        expect(by_id(peer) == by_id(keys), "dec_keys (GET) returned different key material")

    def check_replayed_key_id_fails(self) -> None:
        keys = self.keys(self.enc("POST"), 1, self.status()["key_size"])
        ids = [keys[0]["key_ID"]]
        self.keys(self.dec(self.t.slave, ids), 1, self.status()["key_size"])
        expect_error(self.dec(self.t.slave, ids), {400}, "a replayed key_ID")

    def check_unknown_and_malformed_key_ids(self) -> None:
        expect_error(self.dec(self.t.slave, [str(uuid.uuid4())]), {400}, "an unknown key_ID")
        expect_error(self.dec(self.t.slave, ["non-uuid"]), {400}, "a key_ID that is not a UUID")
        expect_error(self.dec(self.t.slave, ["non-uuid"], method="GET"), {400}, "a key_ID that is not a UUID (GET)")
        r = self.call(self.t.slave, "POST", f"{self.t.master.sae_id}/dec_keys", json={"key_IDs": []})
        expect_error(r, {400}, "an empty key_IDs list")

    def check_wrong_master_in_dec_path(self) -> None:
        keys = self.keys(self.enc("POST"), 1, self.status()["key_size"])
        r = self.dec(self.t.slave, [keys[0]["key_ID"]], master_id=self.t.slave.sae_id)
        expect_error(r, {400, 401}, "dec_keys naming the wrong master SAE")
        # the key is still there for the right request
        self.keys(self.dec(self.t.slave, [keys[0]["key_ID"]]), 1, self.status()["key_size"])

    def check_other_sae_cannot_fetch(self) -> None:
        if self.t.outsider is None:
            raise Skip("no outsider SAE given")
        keys = self.keys(self.enc("POST"), 1, self.status()["key_size"])
        r = self.dec(self.t.outsider, [keys[0]["key_ID"]])
        expect_error(r, {401}, "an SAE the key request did not name (014 Table 7: 401)")
        expect(keys[0]["key"] not in r.text, "the key material leaked in the refusal")
        self.keys(self.dec(self.t.slave, [keys[0]["key_ID"]]), 1, self.status()["key_size"])

    def check_invalid_sizes(self) -> None:
        s = self.status()
        bad: list[Any] = [0, -8, "abc01", s["max_key_size"] + 8]
        if s["min_key_size"] > 8:
            bad.append(s["min_key_size"] - 8)
        for size in bad:
            expect_error(self.enc("GET", size=size), {400}, f"size={size!r} (GET)")
            expect_error(self.enc("POST", size=size), {400}, f"size={size!r} (POST)")

    def check_invalid_numbers(self) -> None:
        bad: list[Any] = [0, -1, "abc01", self.status()["max_key_per_request"] + 1]
        for number in bad:
            expect_error(self.enc("GET", number=number), {400}, f"number={number!r} (GET)")
            expect_error(self.enc("POST", number=number), {400}, f"number={number!r} (POST)")

    def check_malformed_json_body(self) -> None:
        r = self.call(self.t.master, "POST", f"{self.t.slave.sae_id}/enc_keys", data=b"{not json",
                      headers={"Content-Type": "application/json"})
        expect_error(r, {400}, "a body that is not JSON")

    def check_self_as_slave(self) -> None:
        r = self.call(self.t.master, "GET", f"{self.t.master.sae_id}/enc_keys")
        expect_error(r, {400, 401}, "enc_keys naming the caller itself as slave")

    def check_unknown_slave(self) -> None:
        r = self.call(self.t.master, "GET", f"sae-that-does-not-exist-{uuid.uuid4().hex[:8]}/enc_keys")
        expect_error(r, {400, 401}, "an unknown slave SAE")

    def check_extensions(self) -> None:
        r = self.enc("POST", extension_mandatory=[{"org.example.no-such-extension": True}])
        expect_error(r, {400}, "an unsupported mandatory extension")
        r = self.enc("POST", extension_optional=[{"org.example.no-such-extension": True}])
        self.keys(r, 1, self.status()["key_size"])

    def check_multicast(self) -> None:
        s = self.status()
        if self.t.extra_slave is None:
            raise Skip("no additional slave SAE given")
        extra = self.t.extra_slave.sae_id
        if s["max_SAE_ID_count"] == 0:
            expect_error(self.enc("POST", additional_slave_SAE_IDs=[extra]), {400}, "multicast at a KME without it")
            return
        keys = self.keys(self.enc("POST", additional_slave_SAE_IDs=[extra]), 1, s["key_size"])
        ids = [keys[0]["key_ID"]]
        for sae in (self.t.slave, self.t.extra_slave):
            peer = self.keys(self.dec(sae, ids), 1, s["key_size"])
            expect(by_id(peer) == by_id(keys), f"{sae.sae_id} got different key material")
        for bad in ([self.t.slave.sae_id], [self.t.master.sae_id], [extra, extra], ["", extra]):
            expect_error(self.enc("POST", additional_slave_SAE_IDs=bad), {400, 401}, f"additional_slave_SAE_IDs={bad}")
        too_many = [f"sae-extra-{i}" for i in range(s["max_SAE_ID_count"] + 1)]
        expect_error(self.enc("POST", additional_slave_SAE_IDs=too_many), {400, 401}, "more than max_SAE_ID_count")

    def check_no_client_identity_refused(self) -> None:
        """Without a certificate the TLS handshake fails or the KME answers 401 in the ETSI format."""
        if self.t.master.headers and not self.t.master.cert:
            raise Skip("the target authenticates by header, not certificate")
        s = requests.Session()
        s.trust_env, s.verify = False, self.t.ca
        try:
            r = s.get(self.url(self.t.master, f"{self.t.slave.sae_id}/status"), timeout=self.t.timeout_s)
        except requests.exceptions.SSLError:
            return
        except requests.exceptions.ConnectionError:
            return  # some TLS stacks reset the connection on a missing certificate
        expect_error(r, {401}, "a request without a client certificate")

    def check_size_not_multiple_of_8(self) -> None:
        """A KME may serve such a size or refuse it; refusing, it says the standard's words."""
        s = self.status()
        size = s["min_key_size"] + 4
        if size > s["max_key_size"]:
            raise Skip("no size between min_key_size and max_key_size that is not a multiple of 8")
        r = self.enc("POST", size=size)
        if r.status_code == 200:
            return
        body = expect_error(r, {400}, f"size={size}")
        expect(body["message"] == e014.SIZE_NOT_MULTIPLE_OF_8,
               f"size={size}: message {body['message']!r}, not {e014.SIZE_NOT_MULTIPLE_OF_8!r}")

    def check_fixed_messages(self) -> None:
        body = expect_error(self.enc("POST", extension_mandatory=[{"org.example.no-such-extension": True}]), {400},
                            "an unsupported mandatory extension")
        expect(body["message"] == e014.EXTENSION_UNSUPPORTED,
               f"unsupported extension: message {body['message']!r}, not {e014.EXTENSION_UNSUPPORTED!r}")
        named = [d.get(e014.EXTENSION_UNSUPPORTED_KEY) for d in body.get("details", []) if isinstance(d, dict)]
        expect(["org.example.no-such-extension"] in named,
               f"details lack {{{e014.EXTENSION_UNSUPPORTED_KEY!r}: [...]}}: {body.get('details')}")
        body = expect_error(self.dec(self.t.slave, [str(uuid.uuid4())]), {400}, "an unknown key_ID")
        expect(body["message"] == e014.KEYS_NOT_FOUND,
               f"unknown key_ID: message {body['message']!r}, not {e014.KEYS_NOT_FOUND!r}")

    def check_null_and_empty_optionals(self) -> None:
        """Optional means omittable and null means absent: these are all the default request."""
        size = self.status()["key_size"]
        for body in ({"number": None, "size": None, "additional_slave_SAE_IDs": None, "extension_mandatory": None,
                      "extension_optional": None},
                     {"additional_slave_SAE_IDs": [], "extension_mandatory": [], "extension_optional": []},
                     {"extension_mandatory": [{}], "extension_optional": [{}]}):
            try:
                self.keys(self.call(self.t.master, "POST", f"{self.t.slave.sae_id}/enc_keys", json=body), 1, size)
            except Failure as exc:
                raise Failure(f"{json.dumps(body)}: {exc}") from None

    def check_content_types_of_the_standards_clients(self) -> None:
        """A JSON body with the Content-Type a client happens to send (curl -d: form-urlencoded; none; text)."""
        size = self.status()["key_size"]
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": kind} if kind else {}
            r = self.call(self.t.master, "POST", f"{self.t.slave.sae_id}/enc_keys", data=b'{"number": 1}',
                          headers=headers)
            expect(r.status_code in e014.STATUSES, f"Content-Type {kind}: HTTP {r.status_code}, not one of 014's")
            if r.status_code == 200:
                self.keys(r, 1, size)

    def check_exhaustion_is_503(self) -> None:
        """Asking for more key than the KME holds: 503 in the ETSI error format (never 429 or another)."""
        s = self.status()
        number, size = s["max_key_per_request"], s["max_key_size"] // 8 * 8
        for _ in range(self.t.exhaust_attempts):
            r = self.enc("POST", number=number, size=size)
            if r.status_code != 200:
                expect_error(r, {503}, "key exhausted")
                return
        raise Skip(f"not exhausted after {self.t.exhaust_attempts} requests of {number} x {size} bits")

    def check_no_stray_statuses(self) -> None:
        """Every 014 answer so far was 200, 400, 401 or 503 (run last)."""
        expect(not self.stray, f"answers the standard does not list: {', '.join(self.stray[:10])}")

    # -- ETSI 004 ------------------------------------------------------------------------------------------------
    def open004(self, **qos: Any) -> dict[str, Any]:
        r = self.call004(self.t.master, "open_connect", json={
            "source": f"sae://{self.t.master.sae_id}", "destination": f"sae://{self.t.slave.sae_id}",
            "QoS": {"Key_chunk_size": 32, "Min_bps": 1, "TTL": 120, **qos}})
        return answer004(r, "open_connect")

    def join004(self, ksid: str, field: str = "Key_stream_ID") -> dict[str, Any]:
        r = self.call004(self.t.slave, "open_connect", json={
            "source": f"sae://{self.t.slave.sae_id}", "destination": f"sae://{self.t.master.sae_id}", field: ksid})
        return answer004(r, "join")

    def get004(self, sae: SaeIdentity, ksid: str, **params: Any) -> dict[str, Any]:
        return answer004(self.call004(sae, "get_key", "GET", params={"Key_stream_ID": ksid, **params}), "get_key")

    def close004(self, sae: SaeIdentity, ksid: str) -> dict[str, Any]:
        return answer004(self.call004(sae, "close", json={"Key_stream_ID": ksid}), "close")

    def check_e004_stream_lifecycle(self) -> None:
        opened = self.open004()
        expect(opened["status"] == e004.PEER_NOT_CONNECTED, f"open_connect: status {opened['status']}, not 1")
        ksid = opened.get("Key_stream_ID")
        expect(is_uuid(ksid), f"open_connect: Key_stream_ID {ksid!r} is not a UUID")
        expect(self.get004(self.t.master, ksid)["status"] == e004.PEER_NOT_YET_CONNECTED,
               "get_key before the peer joined: not status 3")
        expect(self.join004(ksid)["status"] == e004.SUCCESSFUL, "the peer's open_connect: not status 0")
        expect(self.join004(ksid)["status"] == e004.KSID_IN_USE, "joining twice: not status 5")
        a, b = self.get004(self.t.master, ksid, index=0), self.get004(self.t.slave, ksid, index=0)
        expect(a["status"] == b["status"] == e004.SUCCESSFUL, f"get_key index 0: statuses {a['status']}, {b['status']}")
        expect(a.get("key_buffer") == b.get("key_buffer"), "the two applications got different chunks for index 0")
        expect(len(base64.b64decode(a["key_buffer"])) == 32, "the chunk is not Key_chunk_size bytes")
        expect(self.close004(self.t.master, ksid)["status"] == e004.SUCCESSFUL, "close: not status 0")
        after = self.get004(self.t.slave, ksid)
        expect(after["status"] == e004.STREAM_GONE and "key_buffer" not in after,
               f"the peer's get_key after CLOSE: status {after['status']}, not 4")

    def check_e004_qos_counter_proposal(self) -> None:
        answer = self.open004(Metadata_mimetype="application/x-no-such-type")
        expect(answer["status"] == e004.QOS_NOT_MET and answer.get("Key_stream_ID") is None,
               f"an unsupported Metadata_mimetype: status {answer['status']}, not 7 without a stream")
        expect(isinstance(answer.get("QoS"), dict) and answer["QoS"].get("Metadata_mimetype")
               != "application/x-no-such-type", "no counter-proposal in QoS")

    def check_e004_metadata_size(self) -> None:
        ksid = self.open004()["Key_stream_ID"]
        self.join004(ksid)
        try:
            small = self.get004(self.t.master, ksid, index=0, metadata_size=1)
            expect(small["status"] == e004.METADATA_TOO_SMALL and "key_buffer" not in small,
                   f"metadata_size=1: status {small['status']}, not 8 without the chunk")
            needed = small.get("metadata_size_needed")
            expect(isinstance(needed, int) and needed > 1, f"status 8 without metadata_size_needed: {small}")
            chunk = self.get004(self.t.master, ksid, index=0, metadata_size=needed)
            expect(chunk["status"] == e004.SUCCESSFUL, f"metadata_size={needed} (as needed): status {chunk['status']}")
            expect(e004.metadata_size(chunk.get("Metadata") or {}) <= needed, "the Metadata exceeds the size needed")
        finally:
            self.close004(self.t.master, ksid)

    def check_e004_one_json_binding(self) -> None:
        ksid = self.open004()["Key_stream_ID"]
        try:
            joined = self.join004(ksid, field="key_stream_id")
            expect(joined["status"] == e004.SUCCESSFUL and joined.get("Key_stream_ID") == ksid,
                   f"a join spelled key_stream_id: status {joined['status']}, Key_stream_ID "
                   f"{joined.get('Key_stream_ID')} (not the same stream joined)")
            r = self.call004(self.t.master, "get_key", "GET", params={"Key_stream_ID": ksid, "no_such_field": 1})
            expect_error(r, {400}, "get_key with an unknown field")
        finally:
            self.close004(self.t.master, ksid)

    CHECKS: tuple[str, ...] = (
        "status_fields", "default_request_get", "default_request_post_empty_body", "number_and_size",
        "round_trip_post", "round_trip_get", "replayed_key_id_fails", "unknown_and_malformed_key_ids",
        "wrong_master_in_dec_path", "other_sae_cannot_fetch", "invalid_sizes", "invalid_numbers",
        "malformed_json_body", "self_as_slave", "unknown_slave", "extensions", "multicast",
        "no_client_identity_refused", "size_not_multiple_of_8", "fixed_messages", "null_and_empty_optionals",
        "content_types_of_the_standards_clients", "e004_stream_lifecycle", "e004_qos_counter_proposal",
        "e004_metadata_size", "e004_one_json_binding", "exhaustion_is_503", "no_stray_statuses",
    )

    def run(self, only: list[str] | None = None) -> list[CheckResult]:
        results = []
        for name in only or self.CHECKS:
            check: Callable[[], None] = getattr(self, f"check_{name}")
            try:
                check()
                results.append(CheckResult(name, "pass"))
            except Skip as exc:
                results.append(CheckResult(name, "skip", str(exc)))
            except (Failure, requests.RequestException, ValueError, KeyError) as exc:
                results.append(CheckResult(name, "fail", f"{type(exc).__name__}: {exc}"))
        return results


# -- helpers -------------------------------------------------------------------------------------------------------
def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def expect_json(response: requests.Response) -> None:
    kind = response.headers.get("Content-Type", "")
    expect(kind.split(";")[0].strip() == "application/json", f"Content-Type {kind!r}, not application/json")


def expect_error(response: requests.Response, codes: set[int], what: str) -> dict[str, Any]:
    """A refusal with one of ``codes`` and the ETSI error body ``{message, details?}`` as application/json."""
    expect(response.status_code in codes,
           f"{what}: expected HTTP {'/'.join(map(str, sorted(codes)))}, got {response.status_code}")
    kind = response.headers.get("Content-Type", "")
    expect(kind.split(";")[0].strip() == "application/json", f"{what}: error Content-Type {kind!r}")
    try:
        body = response.json()
    except ValueError:
        raise Failure(f"{what}: the error body is not JSON: {response.text[:120]!r}") from None
    expect(isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"] != "",
           f"{what}: the error body has no 'message' string: {str(body)[:120]}")
    expect("details" not in body or isinstance(body["details"], list), f"{what}: 'details' is not an array")
    return body


def answer004(response: requests.Response, call: str) -> dict[str, Any]:
    """A 004 answer: HTTP 200 with a JSON object holding an integer ``status``."""
    expect(response.status_code == 200, f"{call}: HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    expect(isinstance(body, dict) and isinstance(body.get("status"), int), f"{call}: no integer status in {body}")
    return body


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def by_id(keys: list[dict[str, Any]]) -> dict[str, str]:
    return {k["key_ID"]: k["key"] for k in keys}


@contextmanager
def probe(target: ProbeTarget) -> Iterator[Probe]:
    p = Probe(target)
    try:
        yield p
    finally:
        for s in p._sessions.values():
            s.close()


def run_probe(target: ProbeTarget, only: list[str] | None = None) -> list[CheckResult]:
    """Every check against ``target``, in order."""
    with probe(target) as p:
        return p.run(only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the master SAE's KME, e.g. https://kme-a:443")
    parser.add_argument("--slave-base-url", help="the slave SAE's KME when it is another node")
    parser.add_argument("--extra-slave-base-url", help="the additional slave's KME (default: the slave's)")
    parser.add_argument("--ca", required=True, help="CA bundle that signed the KME's server certificate")
    parser.add_argument("--master", required=True, type=SaeIdentity.parse, help="ID:cert.pem:key.pem")
    parser.add_argument("--slave", required=True, type=SaeIdentity.parse, help="ID:cert.pem:key.pem")
    parser.add_argument("--extra-slave", type=SaeIdentity.parse, help="a third SAE for multicast checks")
    parser.add_argument("--outsider", type=SaeIdentity.parse, help="an SAE that must not get the probe's keys")
    parser.add_argument("--etsi004-url", help="the master's ETSI 004 REST base, e.g. https://kme-a:443/api")
    parser.add_argument("--etsi004-slave-url", help="the slave's ETSI 004 REST base (default: the master's)")
    parser.add_argument("--only", action="append", choices=Probe.CHECKS, help="run only these checks")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    target = ProbeTarget(args.base_url, args.ca, args.master, args.slave, args.extra_slave, args.outsider,
                         slave_base_url=args.slave_base_url,
                         extra_slave_base_url=args.extra_slave_base_url, etsi004_url=args.etsi004_url,
                         etsi004_slave_url=args.etsi004_slave_url)
    results = run_probe(target, args.only)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.outcome.upper():4}  {r.name}{'  - ' + r.detail if r.detail else ''}")
    failed = [r for r in results if r.outcome == "fail"]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or skipped; {len(failed)} failed",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
