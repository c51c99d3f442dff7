"""The entropy API through real HTTP (Django's test client): formats, provenance, metering, scopes, isolation,
quota, unhealthy and slow sources, the ANU shape, capabilities and the OpenAPI schema.

Sources are files of seeded random bytes read as devices, so every served byte can be located in the file:
tests assert exactly which bytes were delivered, not just how many.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

from qrng.health import HealthTestConfig, startup_bytes
from qrng.models import SourceAlarm
from qrng.quality import chi2_sf
from tenants import quota
from tenants.models import QuotaCounter
from tests.qrng.conftest import ENTROPY_PER_DAY

pytestmark = pytest.mark.django_db

STARTUP = startup_bytes(HealthTestConfig())  # discarded by the start-up test before anything is served


def device(path: str, name: str = "qrng", **extra) -> dict:
    return {"name": name, "kind": "device", "path": path, **extra}


@pytest.fixture
def lab(make_entropy_lab):
    return make_entropy_lab("lab")


@pytest.fixture
def file_source(use_sources, random_file):
    path, data = random_file()
    use_sources([device(path)])
    return data


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# -- raw bytes, streamed ---------------------------------------------------------------------------------------


def test_raw_streams_the_next_bytes_of_the_source_with_provenance_and_meters_them_once(lab, file_source):
    response = lab.get("/api/entropy?bytes=1048576&format=raw")
    assert response.status_code == 200
    assert response.streaming and response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == "1048576"
    data = body_of(response)
    assert data == file_source[STARTUP : STARTUP + (1 << 20)]  # exactly the health-tested bytes, in order
    assert response["X-Entropy-Source"] == "qrng" and response["X-Entropy-Source-Kind"] == "device"
    assert response["X-Entropy-Simulated"] == "false" and response["X-Entropy-Health"] == "healthy"
    assert response["Cache-Control"] == "no-store"
    [record] = lab.ledger()
    assert record.quantity == 1 << 20 and record.idempotency_key == "entropy:" + response["X-Request-Id"]


def test_large_hex_is_streamed_as_text_and_small_hex_is_json(lab, file_source):
    small = lab.get("/api/entropy?format=hex&bytes=16")
    assert small.status_code == 200 and not small.streaming
    assert small.json()["data"] == file_source[STARTUP : STARTUP + 16].hex()
    big = lab.get("/api/entropy?format=hex&bytes=600000")
    assert big.streaming and big["Content-Type"].startswith("text/plain")
    assert body_of(big) == file_source[STARTUP + 16 : STARTUP + 16 + 600000].hex().encode()
    assert lab.charged() == 16 + 600000


# -- formats ---------------------------------------------------------------------------------------------------


def test_integers_in_a_range_are_unbiased_and_rejected_draws_are_charged(lab, file_source):
    # s = 3 * 2^30: x % s on 32-bit words would put half of all values in the first third (p < 1e-300).
    s = 3 * 2**30
    response = lab.get(f"/api/entropy?format=int&min=0&max={s - 1}&count=60000")
    assert response.status_code == 200
    body = response.json()
    values = np.array(body["data"], dtype=np.int64)
    assert len(values) == 60000 and values.min() >= 0 and values.max() <= s - 1
    counts = np.bincount(values // 2**30, minlength=3)
    chi2 = float(((counts - 20000) ** 2 / 20000).sum())
    assert chi2_sf(chi2, 2) > 1e-3, counts
    # A quarter of the words are rejected for this s: the charge counts every word drawn.
    assert body["bytes_consumed"] > 4 * 60000 * 1.2
    assert lab.charged() == body["bytes_consumed"]


def test_dice_are_uniform(lab, file_source):
    values = np.array(lab.get("/api/entropy?format=int&min=1&max=6&count=60000").json()["data"])
    counts = np.bincount(values, minlength=7)[1:]
    assert counts.sum() == 60000 and set(np.unique(values)) == {1, 2, 3, 4, 5, 6}
    assert chi2_sf(float(((counts - 10000) ** 2 / 10000).sum()), 5) > 1e-3, counts


def test_floats_are_53_bit_uniforms_in_the_unit_interval(lab, file_source):
    body = lab.get("/api/entropy?format=float&count=4096").json()
    floats = np.array(body["data"])
    words = np.frombuffer(file_source[STARTUP : STARTUP + 8 * 4096], dtype="<u8")
    assert np.array_equal(floats, (words >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    assert floats.min() >= 0.0 and floats.max() < 1.0
    assert body["bytes_consumed"] == 8 * 4096 == lab.charged()


def test_uint_arrays_normals_and_seeds(lab, file_source):
    u16 = lab.get("/api/entropy?format=uint16&count=8").json()
    expected = np.frombuffer(file_source[STARTUP : STARTUP + 16], dtype="<u2").tolist()
    assert u16["data"] == expected and u16["bytes_consumed"] == 16
    normal = lab.get("/api/entropy?format=normal&count=3&mean=10&stddev=2").json()
    assert len(normal["data"]) == 3 and normal["bytes_consumed"] == 32  # two pairs; the 4th deviate discarded
    seed = lab.get("/api/entropy?format=seed&bits=128").json()
    assert int(seed["hex"], 16) == seed["data"] and 0 <= seed["data"] < 2**128
    assert seed["data"] == int.from_bytes(file_source[STARTUP + 48 : STARTUP + 64], "big")
    assert lab.charged() == 16 + 32 + 16


@pytest.mark.parametrize("query", [
    "format=int&min=5&max=1", "format=int&min=1", "format=bogus", "format=uint8&count=0",
    "format=uint8&count=65537", "format=seed&bits=64", "format=normal&stddev=0", "format=raw&bytes=0",
    "format=hex&bytes=x",
    "format=&bytes=8", "format=hex&bytes=",  # given empty is not absent (the schema's enum and integer have no "")
])
def test_bad_parameters_are_400_in_the_portal_error_format_and_draw_nothing(lab, file_source, query):
    response = lab.get("/api/entropy?" + query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert response["X-Request-Id"]
    assert lab.ledger() == []
    assert lab.get("/api/entropy?format=hex&bytes=4").json()["data"] == file_source[STARTUP : STARTUP + 4].hex()


def test_the_stream_limit_is_the_operators_setting(lab, file_source, settings):
    settings.QRNG_MAX_REQUEST_BYTES = 1000
    assert lab.get("/api/entropy?format=raw&bytes=1001").status_code == 400
    assert len(body_of(lab.get("/api/entropy?format=raw&bytes=1000"))) == 1000


# -- ANU compatibility -----------------------------------------------------------------------------------------


def test_anu_shape_for_every_type(lab, file_source):
    r = lab.get("/api/entropy/anu?length=10&type=uint8")
    body = r.json()
    assert {"type", "length", "data", "success"} <= set(body)
    assert body["type"] == "uint8" and body["length"] == 10 and body["success"] is True
    assert body["data"] == list(file_source[STARTUP : STARTUP + 10])
    assert r["X-Entropy-Source"] == "qrng" and body["provenance"]["simulated"] is False
    u16 = lab.get("/api/entropy/anu?length=5&type=uint16").json()
    assert all(0 <= v < 65536 for v in u16["data"]) and len(u16["data"]) == 5
    hex16 = lab.get("/api/entropy/anu?length=3&type=hex16&size=2").json()
    assert hex16["size"] == 2 and [len(x) for x in hex16["data"]] == [4, 4, 4]
    assert lab.charged() == 10 + 10 + 6


def test_anu_legacy_path_api_key_header_and_error_shape(lab, file_source):
    legacy = lab.get("/api/entropy/anu/API/jsonI.php?length=4&type=uint8")
    assert legacy.status_code == 200 and legacy.json()["length"] == 4
    anu_client = APIClient()  # an ANU client sends its key in x-api-key
    keyed = anu_client.get("/api/entropy/anu?length=2&type=uint8", HTTP_X_API_KEY=lab.client.token_secret)
    assert keyed.status_code == 200 and len(keyed.json()["data"]) == 2
    assert anu_client.get("/api/entropy/anu?length=2", HTTP_X_API_KEY="qx_nope.nope").status_code == 401
    for query in ("length=2000&type=uint8", "length=2&type=", "length=2&type=hex16&size="):  # "" is not absent
        bad = lab.get("/api/entropy/anu?" + query)
        assert bad.status_code == 400, query
        assert bad.json()["success"] is False and bad.json()["message"] and bad.json()["error"]["code"] == "invalid"
    assert lab.charged() == 6


# -- scopes, tenants, quota ------------------------------------------------------------------------------------


def test_a_token_without_entropy_read_gets_403_and_nothing(make_entropy_lab, file_source):
    other = make_entropy_lab("keys-only", scopes=["keys:read", "billing:read"])
    for url in ("/api/entropy?format=raw&bytes=64", "/api/entropy/anu?length=4", "/api/entropy/capabilities",
                "/api/entropy/quality-reports/"):
        response = other.get(url)
        assert response.status_code == 403, url
        assert response.json()["error"]["details"]["required_scope"] == "entropy:read"
    assert APIClient().get("/api/entropy?format=hex").status_code == 401
    assert other.ledger() == []


def test_tenants_never_receive_the_same_bytes(make_entropy_lab, file_source):
    a, b = make_entropy_lab("alpha"), make_entropy_lab("bravo")
    served: list[tuple[str, bytes]] = []
    for i in range(6):
        lab = (a, b)[i % 2]
        served.append((lab.tenant.slug, body_of(lab.get("/api/entropy?format=raw&bytes=65536"))))
        served.append((lab.tenant.slug, bytes.fromhex(lab.get("/api/entropy?format=hex&bytes=1000").json()["data"])))
    spans = []
    for tenant, data in served:
        offset = file_source.find(data)
        assert offset >= STARTUP, "every delivered byte comes from the health-tested stream"
        spans.append((offset, offset + len(data), tenant))
    spans.sort()
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end <= start, "two requests were served overlapping bytes"
    assert {t for *_, t in spans} == {"alpha", "bravo"}
    assert a.charged() == b.charged() == 3 * (65536 + 1000)


def test_quota_exhaustion_is_429_with_ratelimit_headers_and_nothing_is_drawn(lab, file_source):
    quota.consume(lab.tenant, "entropy_bytes", ENTROPY_PER_DAY - 100, "earlier-use")
    from qrng import runtime

    source = runtime.get_service().sources.get("qrng")
    before = source.bytes_served
    for url in ("/api/entropy?format=raw&bytes=101", "/api/entropy?format=hex&bytes=200",
                "/api/entropy?format=uint64&count=13", "/api/entropy/anu?length=101"):
        response = lab.get(url)
        assert response.status_code == 429, url
        assert response.json()["error"]["code"] == "quota_exceeded"
        assert "entropy_bytes.day" in response["RateLimit-Policy"] and response["X-RateLimit-Remaining"] == "100"
        assert not response.streaming and b"data" not in response.content
    assert source.bytes_served == before, "a refused request must not take entropy out of the source"
    assert lab.charged() == ENTROPY_PER_DAY - 100
    assert len(body_of(lab.get("/api/entropy?format=raw&bytes=100"))) == 100  # what is left still works
    assert QuotaCounter.objects.for_tenant(lab.tenant).get(quota_key="entropy_bytes.day").used == ENTROPY_PER_DAY


# -- unhealthy, missing and slow sources -----------------------------------------------------------------------


def test_no_source_is_503_with_retry_after_and_nothing_charged(lab, use_sources, tmp_path):
    use_sources([device(str(tmp_path / "no-such-device"))])
    for url in ("/api/entropy?format=raw&bytes=1024", "/api/entropy?format=hex", "/api/entropy/anu?length=1"):
        response = lab.get(url)
        assert response.status_code == 503, url
        error = response.json()["error"]
        assert error["code"] == "service_unavailable"
        assert "no healthy entropy source" in error["message"] and "cannot be opened" in error["message"]
        assert int(response["Retry-After"]) >= 1 and response["X-Request-Id"]
    assert lab.ledger() == []


def test_without_configuration_or_twin_the_answer_is_503_naming_the_twin(lab, settings, use_sources, tmp_path):
    settings.QRNG_SOURCES = ""
    settings.QKD_TWIN_STATE_DIR = str(tmp_path / "no-twin")
    response = lab.get("/api/entropy?format=hex")
    assert response.status_code == 503
    assert "twin" in response.json()["error"]["message"] and "QRNG_SOURCES" in response.json()["error"]["message"]
    capabilities = lab.get("/api/entropy/capabilities").json()
    assert capabilities["state"] == "unavailable" and "twin" in capabilities["reason"]
    assert lab.ledger() == []


def _stuck_after(random_file, good: int, fill: bytes) -> tuple[str, bytes]:
    path, data = random_file(good + (64 << 10))
    data = data[: good - 1] + b"\x00" + fill * (64 << 10)  # the byte before differs: the run starts at `good`
    with open(path, "wb") as f:
        f.write(data)
    return path, data


def test_a_stuck_source_stops_within_the_rct_cutoff_and_raises_an_alarm(lab, use_sources, random_file):
    good = 200_000
    path, data = _stuck_after(random_file, good, b"\x55")
    use_sources([device(path)])
    cutoff = HealthTestConfig().rct_cutoff
    served = b""
    for _ in range(100):
        response = lab.get("/api/entropy?format=hex&bytes=16384")
        if response.status_code != 200:
            break
        served += bytes.fromhex(response.json()["data"])
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "stopped" in message and "repetition-count" in message
    assert served == data[STARTUP : STARTUP + len(served)] and STARTUP + len(served) <= good
    alarm = SourceAlarm.objects.get()
    assert alarm.test == "repetition-count" and alarm.sample_index == good + cutoff - 1
    assert lab.charged() == len(served)
    capabilities = lab.get("/api/entropy/capabilities").json()
    assert capabilities["state"] == "unavailable"
    assert capabilities["sources"][0]["health"] == "failed"
    assert capabilities["alarms"][0]["sample_index"] == good + cutoff - 1
    assert lab.get("/api/entropy?format=hex").status_code == 503  # stays stopped until an operator resets it


def test_a_stuck_stream_is_cut_short_and_only_the_served_bytes_stay_charged(lab, use_sources, random_file):
    good = 3 << 20
    path, data = _stuck_after(random_file, good, b"\xaa")
    use_sources([device(path)])
    response = lab.get("/api/entropy?format=raw&bytes=8388608")
    assert response.status_code == 200  # the failure comes after the headers: the body is short
    body = body_of(response)
    assert len(body) < 8 << 20 and body == data[STARTUP : STARTUP + len(body)]
    assert STARTUP + len(body) <= good
    consumed, released = lab.ledger()
    assert consumed.quantity == 8 << 20 and released.quantity == -((8 << 20) - len(body))
    assert lab.charged() == len(body)


def test_a_biased_source_is_caught_by_the_adaptive_proportion_test(lab, use_sources, random_file):
    path, data = random_file(1 << 20)
    biased = np.frombuffer(data, dtype=np.uint8).copy()
    biased[np.random.default_rng(3).random(biased.size) < 0.12] = 0  # byte 0 at 12 % instead of 0.4 %
    with open(path, "wb") as f:
        f.write(biased.tobytes())
    use_sources([device(path)])
    response = lab.get("/api/entropy?format=raw&bytes=524288")
    assert response.status_code == 503 and "adaptive-proportion" in response.json()["error"]["message"]
    assert lab.ledger() == []


def test_operator_reset_reruns_the_startup_test(lab, use_sources, random_file, make_user):
    path, _ = _stuck_after(random_file, 8192, b"\x55")
    use_sources([device(path)])
    assert lab.get("/api/entropy?format=hex&bytes=16384").status_code == 503
    with open(path, "wb") as f:  # the operator fixed the device
        f.write(random_file(1 << 20, seed=9, name="fixed.bin")[1])
    assert lab.get("/api/entropy?format=hex").status_code == 503  # a fix alone does not restart a stopped source
    assert lab.client.post("/api/entropy/sources/qrng/reset").status_code == 403  # tenants cannot reset
    operator = make_user("op", staff=True)
    op = APIClient()
    op.force_authenticate(operator)
    reset = op.post("/api/entropy/sources/qrng/reset")
    assert reset.status_code == 200 and reset.json() == {"source": "qrng", "alarms_closed": 1, "health": "healthy"}
    assert lab.get("/api/entropy?format=hex").status_code == 200
    assert SourceAlarm.objects.get().reset_by == operator


def test_a_slow_appliance_is_a_clear_503_after_its_timeout(lab, use_sources, appliance):
    from tests.qrng.conftest import ApplianceHandler

    ApplianceHandler.slow_seconds = 1.5
    use_sources([{"name": "box", "kind": "http", "url_template": appliance + "/slow?bytes={bytes}",
                  "read_timeout": 0.2, "attempts": 1}])
    response = lab.get("/api/entropy?format=hex&bytes=32")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "box" in message and "timed out" in message and "read 0.2 s" in message
    assert int(response["Retry-After"]) >= 1
    assert lab.ledger() == []


def test_a_fallback_source_serves_only_when_the_active_one_cannot(lab, use_sources, random_file, tmp_path):
    path, data = random_file()
    use_sources([device(str(tmp_path / "missing"), name="pcie"), device(path, name="backup", fallback=True)])
    response = lab.get("/api/entropy?format=hex&bytes=8")
    assert response.status_code == 200 and response["X-Entropy-Source"] == "backup"
    assert response.json()["data"] == data[STARTUP : STARTUP + 8].hex()


# -- the default source: the twin's simulated QRNG -------------------------------------------------------------


def test_the_default_source_is_the_twins_qrng_labelled_simulated(lab, use_sources, settings, tmp_path, qrng_twin):
    state = tmp_path / "twin"
    state.mkdir()
    (state / "endpoints.json").write_text(json.dumps({
        "insecure": False, "ca": qrng_twin["ca"],
        "nodes": {"CAIT": {"url": qrng_twin["url"], "local": True}},
        "portal": {"cert": qrng_twin["client_cert"], "key": qrng_twin["client_key"]},
    }))
    settings.QRNG_SOURCES = ""
    settings.QKD_TWIN_STATE_DIR = str(state)
    response = lab.get("/api/entropy?format=int&min=1&max=6&count=5")
    assert response.status_code == 200
    body = response.json()
    assert response["X-Entropy-Simulated"] == "true" and response["X-Entropy-Source-Kind"] == "twin"
    assert body["provenance"]["simulated"] is True and "not quantum" in body["provenance"]["notice"]
    raw = lab.get("/api/entropy?format=raw&bytes=4096")
    assert raw["X-Entropy-Simulated"] == "true" and len(body_of(raw)) == 4096
    capabilities = lab.get("/api/entropy/capabilities")
    assert capabilities["X-Entropy-Simulated"] == "true"
    assert capabilities.json()["any_simulated"] and capabilities.json()["sources"][0]["simulated"]


# -- capabilities and schema -----------------------------------------------------------------------------------


def test_capabilities_list_formats_limits_and_source_health(lab, file_source, settings):
    settings.QRNG_MAX_REQUEST_BYTES = 64 << 20
    body = lab.get("/api/entropy/capabilities").json()
    assert body["state"] == "available" and body["any_simulated"] is False
    assert {"raw", "int", "float", "seed"} <= set(body["formats"]) and body["max_stream_bytes"] == 64 << 20
    [source] = body["sources"]
    assert source["name"] == "qrng" and source["simulated"] is False
    assert source["health_tests"]["rct_cutoff"] == 7 and source["health_tests"]["apt_cutoff"] == 26
    assert body["alarms"] == []


def test_openapi_documents_the_entropy_api_and_its_simulated_labelling(lab, tmp_path):
    schema = yaml.safe_load(APIClient().get("/api/schema/").content)
    paths = schema["paths"]
    for path in ("/api/entropy/", "/api/entropy/anu/", "/api/entropy/capabilities/",
                 "/api/entropy/quality-reports/", "/api/entropy/quality-reports/{id}/"):
        assert path in paths, path
    entropy = paths["/api/entropy/"]["get"]
    assert "simulated" in entropy["description"].lower()
    assert "application/octet-stream" in entropy["responses"]["200"]["content"]
    assert {"400", "403", "429", "503"} <= set(entropy["responses"])
    assert "simulated" in paths["/api/entropy/anu/"]["get"]["description"].lower()
    assert not any("jsonI.php" in p for p in paths)
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_a_filler_thread_keeps_a_local_pool_full_and_requests_are_served_from_it(lab, use_sources, random_file,
                                                                                    settings):
    import time

    from qrng import runtime

    settings.REDIS_URL = ""  # the thread fills a process's local pool; with Redis the beat task fills instead
    settings.QRNG_POOL_FILLER_THREAD = True
    settings.QRNG_POOL_TARGET_BYTES = 1 << 20
    settings.QRNG_POOL_CHUNK_BYTES = 64 << 10
    path, data = random_file(8 << 20)
    use_sources([device(path)])
    pool = runtime.get_service().pool
    deadline = time.monotonic() + 30
    while pool.level() < (1 << 20) and time.monotonic() < deadline:  # bounded wait for the thread, not a timing
        time.sleep(0.02)
    assert pool.level() >= 1 << 20
    source = runtime.get_service().sources.get("qrng")
    read_before = source.bytes_served
    body = body_of(lab.get("/api/entropy?format=raw&bytes=262144"))
    assert body == data[STARTUP : STARTUP + 262144]  # the pool hands out the stream in order, once
    assert read_before >= 1 << 20 and lab.charged() == 262144


@pytest.mark.parametrize("value", ["not json", "[]", '[{"name": "x", "kind": "laser"}]', '[{"kind": "device"}]'])
def test_a_bad_source_configuration_fails_the_system_check(settings, value):
    from qrng.checks import check_qrng_sources

    settings.QRNG_SOURCES = value
    [error] = check_qrng_sources()
    assert error.id == "qrng.E001" and "QRNG_SOURCES" in error.msg
    settings.QRNG_SOURCES = '[{"name": "pcie", "kind": "device", "path": "/dev/qrandom0"}]'
    assert check_qrng_sources() == []

