"""The service facade the Django layer calls: bodies, consumption (the ledger unit), provenance, errors."""

import base64
import json
import threading

import numpy as np
import pytest

from qrng.formats import FormatError
from qrng.service import EntropyService, http_status, provenance_headers, retry_after
from qrng.sources import NoHealthyEntropySource, UnknownEntropySource


@pytest.fixture
def device(tmp_path):
    data = np.random.default_rng(41).bytes(4 << 20)
    (tmp_path / "qrandom0").write_bytes(data)
    return str(tmp_path / "qrandom0"), data


def make_service(path, **pool):
    return EntropyService.from_config([{"name": "pcie", "kind": "device", "path": path}], **pool)


def test_consumed_bytes_equal_what_left_the_pool(device):
    service = make_service(device[0], read_through=False, chunk_bytes=4096, target_bytes=1 << 20)
    service.pool.fill()
    for format, params in [
        ("int", {"min": 0, "max": 2**31, "count": 500}),  # rejected draws count too
        ("normal", {"count": 11}),
        ("uint16", {"count": 7}),
        ("seed", {"bits": 256}),
        ("hex", {"bytes": 33}),
    ]:
        before = service.pool.level()
        draw = service.draw(format, params, request_id="r-1")
        assert before - service.pool.level() == draw.consumed > 0, format


def test_json_body_carries_provenance(device):
    service = make_service(device[0])
    body = service.draw("seed", {"bits": 128}, request_id="req-42").json_body()
    for format, params in [("int", {"min": 0, "max": 9}), ("uint64", {"count": 2}), ("normal", {})]:
        json.dumps(service.draw(format, params).json_body(), allow_nan=False)  # plain JSON bodies
    assert int(body["hex"], 16) == body["data"] and body["bytes_consumed"] == 16
    assert body["provenance"]["request_id"] == "req-42"
    assert body["provenance"]["sources"][0] == {
        "source": "pcie",
        "kind": "device",
        "simulated": False,
        "health": "healthy",
    }
    assert "notice" not in body["provenance"]
    raw = service.draw("raw", {"bytes": 30}).json_body()
    assert len(base64.b64decode(raw["data"])) == 30


def test_simulated_twin_is_labelled_everywhere(appliance):
    service = EntropyService.from_config([{"name": "twin", "kind": "twin", "node_base_url": appliance}])
    caps = service.capabilities()
    assert caps["any_simulated"] and "not quantum" in caps["simulated_notice"]
    assert caps["sources"][0]["simulated"] is True
    draw = service.draw("float", {"count": 4})
    assert draw.simulated and "not quantum" in draw.json_body()["provenance"]["notice"]
    assert provenance_headers(draw.provenance, "r")["X-Entropy-Simulated"] == "true"
    anu = service.anu(5, "uint8")
    assert anu.value["success"] is True and anu.simulated


def test_stream_with_headers_and_encoding(device):
    service = make_service(device[0], chunk_bytes=64 << 10)
    chunks, provenance, stream = service.stream(300_000, "base64")
    headers = provenance_headers(provenance, "abc")
    assert headers["X-Entropy-Source"] == "pcie" and headers["X-Request-Id"] == "abc"
    body = b"".join(chunks)
    assert len(base64.b64decode(body)) == 300_000 == stream.bytes_served
    with pytest.raises(FormatError):
        service.stream(10, "json")


def test_capabilities_publish_limits_and_health_parameters(device):
    caps = make_service(device[0]).capabilities()
    assert caps["max_request_bytes"] == 512 * 1024 and "int" in caps["formats"]
    assert caps["sources"][0]["health_tests"]["rct_cutoff"] == 7
    assert caps["any_simulated"] is False and caps["simulated_notice"] is None


def test_errors_map_to_http_statuses(tmp_path):
    (tmp_path / "stuck").write_bytes(b"\x00" * 100_000)
    alarms = []
    service = EntropyService.from_config(
        [{"name": "stuck", "kind": "device", "path": str(tmp_path / "stuck")}], on_alarm=alarms.append
    )
    with pytest.raises(NoHealthyEntropySource) as info:
        service.draw("raw", {"bytes": 10})
    assert http_status(info.value) == 503 and retry_after(info.value) == 5
    assert "stuck stopped" in str(info.value) and len(alarms) == 1
    with pytest.raises(FormatError) as bad:
        service.draw("int", {"min": 3, "max": 1})
    assert http_status(bad.value) == 400
    assert service.capabilities()["sources"][0]["health"] == "failed"


def test_pinned_source_bypasses_the_pool(device, appliance):
    service = EntropyService.from_config(
        [
            {"name": "pcie", "kind": "device", "path": device[0]},
            {"name": "twin", "kind": "twin", "node_base_url": appliance, "fallback": True},
        ]
    )
    assert service.draw("raw", {"bytes": 16}).provenance[0].source == "pcie"
    pinned = service.draw("raw", {"bytes": 16}, source="twin")
    assert [p.source for p in pinned.provenance] == ["twin"] and pinned.simulated
    with pytest.raises(UnknownEntropySource) as info:
        service.draw("raw", {"bytes": 16}, source="nope")
    assert http_status(info.value) == 400


def test_two_tenants_never_receive_the_same_bytes(device):
    path, data = device
    service = make_service(path, chunk_bytes=64 * 100)
    served = {"a": [], "b": []}

    def tenant(name):
        for _ in range(200):
            served[name].append(service.draw("raw", {"bytes": 64 * 3}).value)

    threads = [threading.Thread(target=tenant, args=(name,)) for name in served]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    blocks = {data[i : i + 64]: i for i in range(0, len(data), 64)}
    offsets = {
        name: [blocks[p[i : i + 64]] for p in pieces for i in range(0, len(p), 64)]
        for name, pieces in served.items()
    }
    assert len(offsets["a"]) == len(offsets["b"]) == 600
    assert not set(offsets["a"]) & set(offsets["b"])
    assert len(set(offsets["a"])) == 600 and len(set(offsets["b"])) == 600


def test_quality_report_from_one_source(device):
    service = make_service(device[0])
    progress = []
    report = service.quality_report(20_000, source="pcie", progress=lambda f, s: progress.append(f))
    assert report["provenance"]["sources"][0]["source"] == "pcie" and report["tests_run"] == 8
    assert progress[-1] == 1.0


def test_slow_appliance_becomes_a_clear_503(appliance):
    service = EntropyService.from_config(
        [
            {
                "name": "box",
                "kind": "http",
                "url_template": appliance + "/slow?bytes={bytes}",
                "read_timeout": 0.2,
                "attempts": 2,
                "backoff_initial": 0.05,
            }
        ]
    )
    with pytest.raises(NoHealthyEntropySource) as info:
        service.draw("raw", {"bytes": 64})
    assert http_status(info.value) == 503
    assert "box" in str(info.value) and "timed out" in str(info.value)
    with pytest.raises(NoHealthyEntropySource, match="backing off"):
        service.draw("raw", {"bytes": 64})  # fails fast while the appliance is backed off
