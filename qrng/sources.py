"""Entropy sources: one interface, three kinds (device, http appliance, the network twin), health-tested.

- ``DeviceSource``: a character device or file (``/dev/qrandom0``, ``/dev/hwrng``, a vendor module's
  ``/dev/qrng``), read in large chunks with short-read handling.
- ``HttpSource``: a QRNG appliance over REST, with a URL template, response decoders for the common shapes,
  TLS options, timeouts and exponential backoff.
- ``TwinSource``: the emulated network's QRNG, always labelled simulated.

``HealthTestedSource`` puts any of them behind the SP 800-90B start-up and continuous tests, and ``SourceSet``
chooses among several by priority and weight, falling back only to sources the operator marked as fallbacks.
``build_source_set`` turns the operator's configuration (a list of dicts) into a ``SourceSet``.

Key material is secret: nothing here logs or formats entropy bytes into messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from qrng.health import HealthTest, HealthTestConfig, HealthTestFailure, startup_bytes

log = logging.getLogger(__name__)

HEALTH_UNTESTED = "untested"
HEALTH_OK = "healthy"
HEALTH_FAILED = "failed"


class EntropySourceError(Exception):
    """A source could not deliver entropy."""


class EntropySourceUnavailable(EntropySourceError):
    """The source is unreachable, too slow or out of data (transient: may work again after backoff)."""


class EntropySourceUnhealthy(EntropySourceError):
    """A health test failed: the source serves nothing until an operator resets it."""


class NoHealthyEntropySource(EntropySourceError):
    """No configured source can serve now (the API answers 503 with this message)."""


class UnknownEntropySource(EntropySourceError, LookupError):
    """A request named a source that is not configured (the API answers 400)."""


class EntropySource(ABC):
    """One entropy source. ``read(n)`` returns exactly n bytes or raises ``EntropySourceError``."""

    name: str
    kind: str
    simulated: bool = False

    @abstractmethod
    def read(self, n: int) -> bytes: ...

    def close(self) -> None:  # noqa: B027 - optional for sources without resources
        """Release files and connections."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "simulated": self.simulated}


# -- device ----------------------------------------------------------------------------------------


class DeviceSource(EntropySource):
    """A character device or a file, read in large chunks; short reads are continued until n bytes arrive.

    End of file is an error, never a wrap-around: bytes are never served twice.
    """

    kind = "device"

    def __init__(
        self,
        name: str,
        path: str,
        chunk_size: int = 1 << 20,
        simulated: bool = False,
    ):
        self.name = name
        self.path = path
        self.chunk_size = chunk_size
        self.simulated = simulated
        self._file = None
        self._lock = threading.Lock()

    def _open(self):
        if self._file is None:
            try:
                self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across reads
            except OSError as exc:
                reason = f"entropy device {self.path} cannot be opened: {exc.strerror}"
                raise EntropySourceUnavailable(reason) from exc
        return self._file

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        parts: list[bytes] = []
        filled = 0
        with self._lock:
            f = self._open()
            while filled < n:  # each pass either makes progress or raises, so the loop is bounded by n
                want = min(self.chunk_size, n - filled)
                try:
                    got = f.read(want)  # unbuffered: one read(2), no copy when it is complete
                except InterruptedError:
                    continue
                except OSError as exc:
                    reason = f"entropy device {self.path} read failed: {exc.strerror}"
                    raise EntropySourceUnavailable(reason) from exc
                if not got:  # b"" is end of file; None would be a non-blocking device with no data yet
                    raise EntropySourceUnavailable(f"entropy device {self.path} reached end of data")
                parts.append(got)
                filled += len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path}


# -- http appliance --------------------------------------------------------------------------------


def _json_path(document: Any, path: str) -> Any:
    value = document
    for part in filter(None, path.split(".")):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def decode_raw(response: requests.Response, json_path: str) -> bytes:
    """An ``application/octet-stream`` body (IDQ Quantis ``/streambytes``, the twin)."""
    return response.content


def decode_json_base64(response: requests.Response, json_path: str) -> bytes:
    """Base64 block(s) at json_path: a string or a list of strings (Qrypt ``{"random": [...]}``)."""
    value = _json_path(response.json(), json_path or "random")
    blocks = [value] if isinstance(value, str) else value
    return b"".join(base64.b64decode(block, validate=True) for block in blocks)


def decode_json_bytes(response: requests.Response, json_path: str) -> bytes:
    """An array of integers 0..255 at json_path (ANU ``{"data": [...]}`` with ``type=uint8``)."""
    return bytes(_json_path(response.json(), json_path or "data"))


def decode_json_hex(response: requests.Response, json_path: str) -> bytes:
    """Hex string(s) at json_path (ANU ``type=hex8/hex16``)."""
    value = _json_path(response.json(), json_path or "data")
    blocks = [value] if isinstance(value, str) else value
    return b"".join(bytes.fromhex(block) for block in blocks)


DECODERS: dict[str, Callable[[requests.Response, str], bytes]] = {
    "raw": decode_raw,
    "json-base64": decode_json_base64,
    "json-bytes": decode_json_bytes,
    "json-hex": decode_json_hex,
}


class HttpSource(EntropySource):
    """A QRNG appliance over REST.

    ``url_template`` holds a ``{bytes}`` placeholder for the number of bytes asked for in one request (at
    most ``max_request_bytes``). An appliance may return more than asked (fixed-size blocks): the surplus is
    kept for the next read, never served twice. Transient failures (connection errors, timeouts, 5xx, 429)
    are retried with exponential backoff (bounded attempts); after the last attempt the source backs off and
    fails fast until the backoff delay has passed.
    """

    kind = "http"

    def __init__(
        self,
        name: str,
        url_template: str,
        decoder: str = "raw",
        json_path: str = "",
        max_request_bytes: int = 1 << 20,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        verify: bool | str = True,
        client_cert: str | None = None,
        client_key: str | None = None,
        headers: dict[str, str] | None = None,
        attempts: int = 2,  # worst case per read: attempts x (connect + read timeout) + backoff
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        simulated: bool = False,
    ):
        if "{bytes}" not in url_template:
            raise ValueError("url_template needs a {bytes} placeholder")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; known: {sorted(DECODERS)}")
        self.name = name
        self.url_template = url_template
        self.decoder = decoder
        self.json_path = json_path
        self.max_request_bytes = max_request_bytes
        self.timeout = (connect_timeout, read_timeout)
        self.attempts = max(1, attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.simulated = simulated
        # TLS settings go on every request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self.verify = verify  # True, False, or a CA bundle path
        self.cert = ((client_cert, client_key) if client_key else client_cert) if client_cert else None
        self._session = requests.Session()
        if headers:
            self._session.headers.update(headers)
        self._surplus = b""
        self._failures = 0
        self._not_before = 0.0
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """``host:port`` of the appliance, never the ``user:password@`` a URL may carry (it goes into messages)."""
        parts = urlsplit(self.url_template)
        hostname = parts.hostname or ""
        hostname = f"[{hostname}]" if ":" in hostname else hostname
        return f"{hostname}:{parts.port}" if parts.port else hostname

    def internal_strings(self) -> set[str]:
        """What locates or unlocks the appliance: shown to operators only."""
        parts = urlsplit(self.url_template)
        return {x for x in (self.url_template, parts.netloc, self.host, parts.hostname, parts.username,
                            parts.password) if x}

    def _backoff_delay(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))

    def check_response(self, response: requests.Response) -> None:
        """Hook for subclasses to validate headers before the body is decoded."""

    def _fetch(self, n: int) -> bytes:
        url = self.url_template.format(bytes=n)
        last_error = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._session.get(url, timeout=self.timeout, verify=self.verify, cert=self.cert)
            except requests.Timeout:
                last_error = f"timed out (connect {self.timeout[0]} s, read {self.timeout[1]} s)"
            except requests.ConnectionError as exc:
                last_error = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    self.check_response(response)
                    content_type = response.headers.get("Content-Type", "")
                    if self.decoder == "raw" and content_type.startswith(("text/", "application/json")):
                        # An error page with status 200 must never be mistaken for entropy.
                        raise EntropySourceError(
                            f"QRNG appliance {self.name} at {self.host} sent {content_type}, not raw octets"
                        )
                    try:
                        data = DECODERS[self.decoder](response, self.json_path)
                    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
                        raise EntropySourceError(
                            f"QRNG appliance {self.name} at {self.host}: cannot decode the {self.decoder} "
                            f"response ({type(exc).__name__})"
                        ) from exc
                    if not data:
                        raise EntropySourceUnavailable(f"QRNG appliance {self.name} returned no data")
                    return data
                last_error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    raise EntropySourceError(
                        f"QRNG appliance {self.name} at {self.host} refused: {last_error}"
                    )
            if attempt < self.attempts:
                time.sleep(self._backoff_delay(attempt) * (0.5 + random.random() / 2))  # jittered backoff
        where = f"QRNG appliance {self.name} at {self.host}"
        raise EntropySourceUnavailable(f"{where} unavailable: {last_error} after {self.attempts} attempts")

    def read(self, n: int) -> bytes:
        with self._lock:
            now = time.monotonic()
            if now < self._not_before:
                raise EntropySourceUnavailable(
                    f"QRNG appliance {self.name} at {self.host} is backing off for "
                    f"{self._not_before - now:.1f} s after {self._failures} failed reads"
                )
            parts = [self._surplus[:n]]
            have = len(parts[0])
            self._surplus = self._surplus[have:]
            # Bounded even if the appliance sends dribbles.
            max_requests = 4 + 4 * -(-n // self.max_request_bytes)
            for _ in range(max_requests):
                if have >= n:
                    break
                try:
                    data = self._fetch(min(self.max_request_bytes, n - have))
                except EntropySourceUnavailable:
                    self._failures += 1
                    self._not_before = time.monotonic() + self._backoff_delay(self._failures)
                    raise
                self._failures = 0
                take = min(len(data), n - have)
                parts.append(data[:take])
                self._surplus += data[take:]
                have += take
            if have < n:
                raise EntropySourceUnavailable(f"QRNG appliance {self.name} delivered too little data")
            return b"".join(parts)

    def close(self) -> None:
        self._session.close()
        self._surplus = b""

    def describe(self) -> dict:
        return {**super().describe(), "host": self.host, "decoder": self.decoder}


class TwinSource(HttpSource):
    """The network twin's QRNG: ``GET {node_base_url}/api/v1/entropy?bytes=N`` -> octet-stream.

    Always simulated, whatever the server says; a response that does not declare itself simulated is refused,
    so a misconfigured URL can never make real-looking entropy out of something else.
    """

    kind = "twin"

    def __init__(self, name: str, node_base_url: str, **options: Any):
        options.pop("simulated", None)
        options.setdefault("decoder", "raw")
        super().__init__(
            name, node_base_url.rstrip("/") + "/api/v1/entropy?bytes={bytes}", simulated=True, **options
        )

    def check_response(self, response: requests.Response) -> None:
        if response.headers.get("X-Entropy-Simulated", "").lower() != "true":
            raise EntropySourceError(
                f"twin source {self.name} at {self.host}: the response does not declare itself simulated"
            )


# -- health-tested source --------------------------------------------------------------------------


@dataclass(frozen=True)
class Alarm:
    """A health-test alarm, for the operator (never contains entropy)."""

    source: str
    test: str
    sample_index: int
    detail: str
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)


AlarmHook = Callable[[Alarm], None]


class HealthTestedSource(EntropySource):
    """A source behind the SP 800-90B start-up test and continuous RCT/APT on every byte it passes.

    The start-up test runs on first use (or ``start()``) over at least 1024 samples, which are discarded.
    A buffer is released only after it passed the tests, so no byte of a failing read is ever served. On
    failure the source stops serving (``EntropySourceUnhealthy``), records an ``Alarm`` and calls
    ``on_alarm``; only an explicit ``reset()`` (which reruns the start-up test) brings it back.

    Reads are pipelined with hand-over-hand locking: a reader takes the test lock before it releases the read
    lock, so buffers are tested in exactly the order they were read (one stream), while the next thread
    already reads the device. Two filler threads thus overlap device I/O with testing.
    """

    def __init__(
        self,
        source: EntropySource,
        config: HealthTestConfig | None = None,
        on_alarm: AlarmHook | None = None,
    ):
        self.source = source
        self.config = config or HealthTestConfig()
        self.on_alarm = on_alarm
        self.health = HEALTH_UNTESTED
        self.last_alarm: Alarm | None = None
        self.last_error: str | None = None
        self.bytes_served = 0
        self._test = HealthTest(self.config)
        self._read_lock = threading.Lock()  # always taken before _test_lock
        self._test_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def simulated(self) -> bool:
        return self.source.simulated

    @property
    def healthy(self) -> bool:
        return self.health != HEALTH_FAILED

    def _raise_unhealthy(self) -> None:
        alarm = self.last_alarm
        reason = f"{alarm.test} test failed" if alarm else "health test failed"
        raise EntropySourceUnhealthy(
            f"entropy source {self.name} stopped: {reason}; an operator must reset it"
        )

    def _record_failure(self, failure: HealthTestFailure) -> None:
        self.health = HEALTH_FAILED
        self.last_alarm = Alarm(self.name, failure.test, failure.sample_index, failure.detail)
        log.error(
            "entropy source %s failed its %s health test at sample %d",
            self.name,
            failure.test,
            failure.sample_index,
        )
        if self.on_alarm is not None:
            try:
                self.on_alarm(self.last_alarm)
            except Exception:  # an alarm hook must never turn a stopped source back on
                log.exception("alarm hook failed for entropy source %s", self.name)

    def start(self) -> None:
        """Run the start-up test (discarding its samples); raise ``EntropySourceUnhealthy`` on failure."""
        with self._read_lock, self._test_lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self.health == HEALTH_FAILED:
            self._raise_unhealthy()
        if self.health == HEALTH_OK:
            return
        self._test.reset()
        data = self.source.read(startup_bytes(self.config))
        try:
            self._test.feed(data)
        except HealthTestFailure as failure:
            self._record_failure(
                HealthTestFailure("startup/" + failure.test, failure.sample_index, failure.detail)
            )
            self._raise_unhealthy()
        self.health = HEALTH_OK

    def reset(self) -> None:
        """Operator action: clear the failure and rerun the start-up test."""
        with self._read_lock, self._test_lock:
            self.health = HEALTH_UNTESTED
            self._test.reset()
            self._start_locked()

    def read(self, n: int) -> bytes:
        if self.health != HEALTH_OK:
            self.start()
        with self._read_lock:
            if self.health == HEALTH_FAILED:
                self._raise_unhealthy()
            try:
                data = self.source.read(n)
            except EntropySourceUnavailable as exc:
                self.last_error = str(exc)
                raise
            self._test_lock.acquire()  # before releasing the read lock: keeps the stream order
        try:
            if self.health == HEALTH_FAILED:  # an earlier buffer failed while this one was being read
                self._raise_unhealthy()
            try:
                self._test.feed(data)
            except HealthTestFailure as failure:
                self._record_failure(failure)
                self._raise_unhealthy()
            self.last_error = None
            self.bytes_served += len(data)
            return data
        finally:
            self._test_lock.release()

    def close(self) -> None:
        self.source.close()

    def describe(self) -> dict:
        return {
            **self.source.describe(),
            "health": self.health,
            "health_tests": self.config.describe(),
            "last_alarm": self.last_alarm.as_dict() if self.last_alarm else None,
            "last_error": self.last_error,
        }


# -- a set of sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """Where served bytes came from: every response carries this."""

    source: str
    kind: str
    simulated: bool
    health: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SourceEntry:
    source: HealthTestedSource
    priority: int = 1  # lower number is preferred
    weight: float = 1.0  # share among active sources of equal priority
    fallback: bool = False  # used only when no active (non-fallback) source can serve


class SourceSet:
    """Several health-tested sources, chosen by priority and weight.

    Active sources (``fallback=False``) serve by priority (lowest number first), shared by weight within one
    priority. Fallback sources serve only when no active source can. Nothing else is ever used: no PRNG, no
    unconfigured source. With none able to serve, ``NoHealthyEntropySource`` explains why for each source.
    """

    def __init__(self, entries: list[SourceEntry], rng: random.Random | None = None):
        names = [e.source.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError("entropy source names must be unique")
        self.entries = list(entries)
        self._rng = rng or random.Random()

    def get(self, name: str) -> HealthTestedSource:
        for entry in self.entries:
            if entry.source.name == name:
                return entry.source
        raise UnknownEntropySource(f"no entropy source named {name!r}")

    def _candidates(self, entries: list[SourceEntry]) -> list[SourceEntry]:
        """Healthy entries in the order to try: by priority, weighted random order within a priority."""
        ordered: list[SourceEntry] = []
        for priority in sorted({e.priority for e in entries}):
            tier = [e for e in entries if e.priority == priority and e.source.healthy]
            while tier:
                pick = self._rng.choices(tier, weights=[max(e.weight, 1e-9) for e in tier])[0]
                ordered.append(pick)
                tier.remove(pick)
        return ordered

    def read(self, n: int, source: str | None = None) -> tuple[bytes, Provenance]:
        """n bytes from one source, with their provenance. ``source`` pins one source (no fallback at all)."""
        if source is not None:
            entries = [e for e in self.entries if e.source.name == source]
            if not entries:
                raise UnknownEntropySource(f"no entropy source named {source!r}")
            plan = [entries]
        else:
            plan = [[e for e in self.entries if not e.fallback], [e for e in self.entries if e.fallback]]
        reasons: list[str] = []
        for group in plan:
            for entry in self._candidates(group):
                src = entry.source
                try:
                    data = src.read(n)
                except EntropySourceError as exc:
                    reasons.append(str(exc))
                    continue
                return data, Provenance(src.name, src.kind, src.simulated, src.health)
            reasons.extend(
                f"entropy source {e.source.name} is {e.source.health}" for e in group if not e.source.healthy
            )
        raise NoHealthyEntropySource(
            "no healthy entropy source can serve now: " + ("; ".join(reasons) or "none configured")
        )

    def describe(self) -> list[dict]:
        return [
            {**e.source.describe(), "priority": e.priority, "weight": e.weight, "fallback": e.fallback}
            for e in self.entries
        ]

    def close(self) -> None:
        for entry in self.entries:
            entry.source.close()


# -- configuration ---------------------------------------------------------------------------------

_SET_KEYS = {"name", "kind", "priority", "weight", "fallback", "health"}
_KINDS: dict[str, type[EntropySource]] = {"device": DeviceSource, "http": HttpSource, "twin": TwinSource}


def build_source(config: dict) -> EntropySource:
    """One source from its operator configuration: ``{"name": "pcie", "kind": "device", "path": ...}``."""
    kind = config.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"entropy source kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if not config.get("name"):
        raise ValueError("every entropy source needs a name")
    options = {k: v for k, v in config.items() if k not in _SET_KEYS}
    return _KINDS[kind](config["name"], **options)


def build_source_set(
    configs: list[dict] | str,
    on_alarm: AlarmHook | None = None,
    rng: random.Random | None = None,
) -> SourceSet:
    """A ``SourceSet`` from the operator's configuration (a list of dicts, or its JSON text).

    Each dict: ``name``, ``kind`` (device | http | twin), the kind's options, and optionally ``priority``,
    ``weight``, ``fallback`` and ``health`` (``{"min_entropy", "alpha", "sample_bits"}``).
    """
    if isinstance(configs, str):
        configs = json.loads(configs)
    entries = []
    for config in configs:
        source = build_source(config)
        health = HealthTestConfig.from_dict(config.get("health"))
        entries.append(
            SourceEntry(
                HealthTestedSource(source, health, on_alarm),
                priority=int(config.get("priority", 1)),
                weight=float(config.get("weight", 1.0)),
                fallback=bool(config.get("fallback", False)),
            )
        )
    return SourceSet(entries, rng=rng)


def default_source_config(node_base_url: str, **tls_options: Any) -> list[dict]:
    """With no configuration: the network twin's simulated QRNG only."""
    return [{"name": "twin", "kind": "twin", "node_base_url": node_base_url, **tls_options}]
