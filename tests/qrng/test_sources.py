"""Entropy sources over real files, FIFOs and loopback HTTP(S); health-tested sources and source sets."""

import json
import os
import random
import threading
import time

import numpy as np
import pytest

from qrng.health import HealthTestConfig
from qrng.sources import (
    HEALTH_FAILED,
    HEALTH_OK,
    DeviceSource,
    EntropySourceError,
    EntropySourceUnavailable,
    EntropySourceUnhealthy,
    HealthTestedSource,
    HttpSource,
    NoHealthyEntropySource,
    SourceEntry,
    SourceSet,
    TwinSource,
    UnknownEntropySource,
    build_source_set,
)

from .conftest import ApplianceHandler


def random_file(path, n, seed=5):
    data = np.random.default_rng(seed).bytes(n)
    path.write_bytes(data)
    return data


# -- device ----------------------------------------------------------------------------------------


def test_device_source_reads_a_file_in_order_and_never_wraps(tmp_path):
    data = random_file(tmp_path / "qrandom0", 10_000)
    source = DeviceSource("pcie", str(tmp_path / "qrandom0"), chunk_size=4096)
    assert source.read(6000) + source.read(3000) == data[:9000]
    with pytest.raises(EntropySourceUnavailable, match="end of data"):
        source.read(2000)  # only 1000 left: refuse rather than reuse bytes
    source.close()


def test_device_source_continues_short_reads_from_a_character_stream(tmp_path):
    fifo = tmp_path / "qrng"
    os.mkfifo(fifo)
    pieces = [np.random.default_rng(i).bytes(700) for i in range(10)]

    def driver():  # writes in small pieces with pauses, like a slow device driver
        with open(fifo, "wb", buffering=0) as f:
            for piece in pieces:
                f.write(piece)
                time.sleep(0.01)

    writer = threading.Thread(target=driver)
    writer.start()
    source = DeviceSource("fifo", str(fifo))
    assert source.read(7000) == b"".join(pieces)
    writer.join(timeout=5)
    source.close()


def test_device_source_reads_dev_urandom():
    source = DeviceSource("urandom", "/dev/urandom")
    a, b = source.read(1 << 20), source.read(1 << 20)
    assert len(a) == len(b) == 1 << 20 and a != b
    source.close()


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(EntropySourceUnavailable, match="cannot be opened"):
        DeviceSource("gone", str(tmp_path / "nope")).read(10)


# -- http appliance --------------------------------------------------------------------------------


def test_raw_octet_stream_decoder(appliance):
    source = HttpSource("quantis", appliance + "/raw?bytes={bytes}", max_request_bytes=4096)
    data = source.read(10_000)
    assert len(data) == 10_000
    assert ApplianceHandler.calls["/raw"] == 3  # 4096 + 4096 + 1808


def test_json_base64_blocks_keep_the_surplus_for_the_next_read(appliance):
    source = HttpSource("qrypt", appliance + "/qrypt?size={bytes}", decoder="json-base64")
    first, second = source.read(100), source.read(900)
    assert len(first) == 100 and len(second) == 900 and first not in second
    assert ApplianceHandler.calls["/qrypt"] == 1  # one 1 KiB block served both reads, each byte once
    assert len(source.read(2000)) == 2000


def test_json_array_of_bytes_decoder(appliance):
    source = HttpSource("anu", appliance + "/anu?bytes={bytes}", decoder="json-bytes", json_path="data")
    assert len(source.read(300)) == 300


def test_configurable_json_path_and_hex_decoder(appliance):
    nested = HttpSource(
        "nested", appliance + "/nested?bytes={bytes}", decoder="json-base64", json_path="result.entropy"
    )
    assert len(nested.read(64)) == 64
    hexed = HttpSource("hex", appliance + "/hex?bytes={bytes}", decoder="json-hex")
    assert len(hexed.read(64)) == 64


def test_appliance_sending_less_than_asked_is_read_again(appliance):
    source = HttpSource("short", appliance + "/short?bytes={bytes}")
    assert len(source.read(450)) == 450
    assert ApplianceHandler.calls["/short"] == 5


def test_slow_appliance_times_out_with_a_clear_error_then_backs_off(appliance):
    source = HttpSource(
        "slow",
        appliance + "/slow?bytes={bytes}",
        read_timeout=0.3,
        attempts=2,
        backoff_initial=0.05,
        backoff_max=5,
    )
    with pytest.raises(EntropySourceUnavailable, match=r"timed out .* after 2 attempts"):
        source.read(32)
    # the read gave up (two attempts, both timed out) and the source is now backing off: one failed read,
    # not before the initial backoff delay has passed
    assert ApplianceHandler.calls["/slow"] == 2
    assert source._failures == 1 and source._not_before > time.monotonic()
    with pytest.raises(EntropySourceUnavailable, match=r"backing off .* after 1 failed reads"):
        source.read(32)  # fails fast during the backoff: the appliance is not asked again
    assert ApplianceHandler.calls["/slow"] == 2 and source._failures == 1


def test_transient_errors_are_retried_with_backoff(appliance):
    source = HttpSource("flaky", appliance + "/flaky?bytes={bytes}", attempts=3, backoff_initial=0.01)
    assert len(source.read(64)) == 64
    assert ApplianceHandler.calls["/flaky"] == 3


def test_client_errors_and_undecodable_responses_are_not_retried(appliance):
    with pytest.raises(EntropySourceError, match="refused: HTTP 403"):
        HttpSource("f", appliance + "/forbidden?bytes={bytes}", backoff_initial=0.01).read(8)
    assert ApplianceHandler.calls["/forbidden"] == 1
    with pytest.raises(EntropySourceError, match="cannot decode"):
        HttpSource("g", appliance + "/garbage?bytes={bytes}", decoder="json-bytes").read(8)
    with pytest.raises(EntropySourceError, match="not raw octets"):
        HttpSource("h", appliance + "/garbage?bytes={bytes}").read(8)  # a 200 page is not entropy


def test_unreachable_appliance_is_unavailable():
    source = HttpSource("down", "http://127.0.0.1:9/raw?bytes={bytes}", attempts=2, backoff_initial=0.01)
    with pytest.raises(EntropySourceUnavailable, match="connection failed"):
        source.read(8)


# -- twin ------------------------------------------------------------------------------------------


def test_twin_source_over_mutual_tls_is_simulated(qrng_twin):
    source = TwinSource(
        "twin",
        qrng_twin["url"],
        verify=qrng_twin["ca"],
        client_cert=qrng_twin["client_cert"],
        client_key=qrng_twin["client_key"],
    )
    assert source.simulated is True and source.kind == "twin"
    assert len(source.read(5000)) == 5000
    source.close()


def test_twin_source_without_a_client_certificate_is_refused(qrng_twin):
    source = TwinSource("twin", qrng_twin["url"], verify=qrng_twin["ca"], attempts=1)
    with pytest.raises(EntropySourceError, match="refused: HTTP 401"):  # the twin's KME: no certificate, no entropy
        source.read(16)


def test_twin_response_that_does_not_declare_simulated_is_refused(appliance):
    with pytest.raises(EntropySourceError, match="does not declare itself simulated"):
        TwinSource("twin", appliance + "/undeclared").read(16)
    assert len(TwinSource("twin", appliance).read(16)) == 16  # plain HTTP twin


# -- health-tested source --------------------------------------------------------------------------


def test_stuck_appliance_fails_the_startup_test_and_raises_an_alarm(appliance):
    alarms = []
    source = HealthTestedSource(
        HttpSource("stuck", appliance + "/stuck?bytes={bytes}"), on_alarm=alarms.append
    )
    with pytest.raises(EntropySourceUnhealthy, match="stuck stopped: startup/repetition-count"):
        source.read(100)
    assert source.health == HEALTH_FAILED and len(alarms) == 1
    assert alarms[0].source == "stuck" and alarms[0].test == "startup/repetition-count"
    with pytest.raises(EntropySourceUnhealthy):
        source.read(100)  # stays stopped
    assert ApplianceHandler.calls["/stuck"] == 1  # and does not even ask the appliance again


def test_stuck_device_stops_service_within_the_rct_cutoff(tmp_path):
    config = HealthTestConfig(min_entropy=8, alpha=2.0**-40)  # RCT cutoff 6
    healthy = np.random.default_rng(1).bytes(5000)
    stuck_value = (healthy[-1] + 1) % 256
    (tmp_path / "dev").write_bytes(healthy + bytes([stuck_value]) * 100)
    alarms = []
    source = HealthTestedSource(DeviceSource("dev", str(tmp_path / "dev")), config, alarms.append)
    served = bytearray()
    with pytest.raises(EntropySourceUnhealthy):
        for _ in range(10_000):  # one byte per request: the finest possible serving granularity
            served += source.read(1)
    assert served == healthy[1024:] + bytes([stuck_value]) * (config.rct_cutoff - 1)
    assert (
        alarms[0].test == "repetition-count" and alarms[0].sample_index == len(healthy) + 5
    )  # index in the stream, start-up included


def test_failing_read_serves_none_of_its_bytes_and_reset_reruns_the_startup(tmp_path):
    healthy = np.random.default_rng(2).bytes(4096)
    path = tmp_path / "dev"
    path.write_bytes(healthy + b"\x00" * 64 + np.random.default_rng(3).bytes(4096))
    source = HealthTestedSource(DeviceSource("dev", str(path)))
    assert source.read(2048) == healthy[1024:3072]
    with pytest.raises(EntropySourceUnhealthy):
        source.read(2048)  # contains the stuck run: nothing of it is returned
    assert source.bytes_served == 2048
    source.reset()  # the operator fixed the device: start-up test over the next 1024 samples
    assert source.health == HEALTH_OK
    assert len(source.read(1000)) == 1000


# -- source sets -----------------------------------------------------------------------------------


def health_tested(name, path, **kw):
    return HealthTestedSource(DeviceSource(name, str(path)), **kw)


@pytest.fixture
def devices(tmp_path):
    paths = {}
    for i, name in enumerate(["a", "b", "c"]):
        random_file(tmp_path / name, 1 << 20, seed=10 + i)
        paths[name] = tmp_path / name
    (tmp_path / "stuck").write_bytes(b"\x00" * 4096)
    paths["stuck"] = tmp_path / "stuck"
    return paths


def test_priority_then_weight(devices):
    sources = SourceSet(
        [
            SourceEntry(health_tested("a", devices["a"]), priority=1, weight=3),
            SourceEntry(health_tested("b", devices["b"]), priority=1, weight=1),
            SourceEntry(health_tested("c", devices["c"]), priority=2),
        ],
        rng=random.Random(4),
    )
    picks = [sources.read(16)[1].source for _ in range(400)]
    assert picks.count("c") == 0  # a lower priority serves only when the higher ones cannot
    assert 240 < picks.count("a") < 360 and picks.count("a") + picks.count("b") == 400


def test_falls_back_only_to_a_configured_fallback(devices):
    sources = SourceSet(
        [
            SourceEntry(health_tested("stuck", devices["stuck"])),
            SourceEntry(health_tested("b", devices["b"]), fallback=True),
        ]
    )
    data, provenance = sources.read(64)
    assert provenance.source == "b" and provenance.health == HEALTH_OK and len(data) == 64
    alone = SourceSet([SourceEntry(health_tested("stuck", devices["stuck"]))])
    with pytest.raises(NoHealthyEntropySource, match="stuck stopped: startup/repetition-count"):
        alone.read(64)
    with pytest.raises(NoHealthyEntropySource, match="stuck is failed"):
        alone.read(64)


def test_pinned_source_never_falls_back(devices):
    sources = SourceSet(
        [
            SourceEntry(health_tested("stuck", devices["stuck"])),
            SourceEntry(health_tested("b", devices["b"]), fallback=True),
        ]
    )
    with pytest.raises(NoHealthyEntropySource):
        sources.read(64, source="stuck")
    assert sources.read(64, source="b")[1].source == "b"
    with pytest.raises(UnknownEntropySource):
        sources.read(64, source="nope")


def test_source_set_from_operator_json(devices, appliance):
    config = json.dumps(
        [
            {
                "name": "pcie",
                "kind": "device",
                "path": str(devices["a"]),
                "priority": 1,
                "health": {"min_entropy": 6, "alpha": 2.0**-30},
            },
            {
                "name": "box",
                "kind": "http",
                "url_template": appliance + "/raw?bytes={bytes}",
                "fallback": True,
            },
            {"name": "twin", "kind": "twin", "node_base_url": appliance, "fallback": True, "priority": 2},
        ]
    )
    sources = build_source_set(config)
    _, provenance = sources.read(128)
    assert provenance.source == "pcie" and provenance.simulated is False
    described = {d["name"]: d for d in sources.describe()}
    assert described["twin"]["simulated"] is True and described["box"]["fallback"] is True
    assert described["pcie"]["health_tests"]["rct_cutoff"] == 6  # 1 + ceil(30 / 6)
    assert sources.read(128, source="twin")[1].simulated is True
    with pytest.raises(ValueError, match="kind must be one of"):
        build_source_set([{"name": "x", "kind": "prng"}])
