"""Profile the gateway's hot path in one process, against the twin, under cProfile.

``--path gateway`` (default): what the key gateway (the HTTPS listener) does for ETSI 014 ``enc_keys``: its
database job (SAE certificate authentication, rate limit, ETSI checks, quota pre-check), the KME call with its
``AsyncKmeClient``, its metering job (counters, ledger, delivery row) and the JSON, the very functions of
``services.gateway.app``. The TLS listener and the hops to its thread pool are left out (the jobs run on the
loop's thread here).

``--path django``: the same request through the whole Django stack (middleware, DRF, the ETSI 014 views of the
web listener, which token clients on :8000 use), the SAE certificate handed over as gunicorn would
(``environ["gunicorn.socket"].getpeercert``).

    .venv/bin/python bench/gateway_profile.py [--path gateway|django] [--requests 300] [--number 1] [--size 256]
    .venv/bin/python bench/gateway_profile.py --identity-cache-ab    # the gateway path, identity cache off vs on

``--identity-cache-ab``: the gateway path with ``KEY_GATEWAY_IDENTITY_CACHE`` off and on in alternating blocks of
the same run (a shared machine's load drifts alike over both), p50, CPU and database round trips of each (needs
``REDIS_URL``).

PostgreSQL when DATABASE_URL names one (a temporary database is created and dropped), else SQLite.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import TemporaryDatabase, make_tenants, percentile, setup_django, start_twin, stop_process


class PeerSocket:
    """What gunicorn's TLS socket offers the application: the verified peer certificate."""

    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


def gateway_request(der: bytes, body: dict):
    """One key gateway ``enc_keys`` as a plain call: its two database jobs on this thread (as on one of its
    pool's threads, with this thread's connection), the KME call on an event loop in between."""
    import asyncio

    from services import delivery, pki
    from services.gateway.app import Gateway, _json, _order

    gateway, loop = Gateway(), asyncio.new_event_loop()
    credentials, raw = (pki.serial_of(der), None, None), json.dumps(body).encode()

    def one() -> float:
        t0 = time.perf_counter()
        order, headers = _order(credentials, "keys:write", "prof-b", {}, raw)
        async def take_keys():  # the client is made (once) on the loop, as in the gateway
            return await gateway.kme(order.pair.master_node).enc_keys(order.pair.slave_sae, **order.ask())

        keys = loop.run_until_complete(take_keys())
        assert _json(delivery.deliver(order, keys), headers).status == 200
        return time.perf_counter() - t0

    one.close = lambda: loop.run_until_complete(gateway.close())  # type: ignore[attr-defined]
    return one


def identity_cache_ab(one, requests: int, blocks: int = 10) -> None:
    """The gateway's request with the SAE identity cache off and on, in alternating blocks."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if not settings.REDIS_URL:
        raise SystemExit("--identity-cache-ab needs REDIS_URL (the cache lives on Redis)")
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    queries: dict[bool, int] = {}
    for block in range(blocks):
        for cached in (False, True) if block % 2 == 0 else (True, False):
            settings.KEY_GATEWAY_IDENTITY_CACHE = cached
            one()  # the cache filled (or not) before the block
            cpu0 = time.process_time()
            times[cached] += [one() for _ in range(max(1, requests // blocks))]
            cpu[cached] += time.process_time() - cpu0
    for cached in (False, True):
        settings.KEY_GATEWAY_IDENTITY_CACHE = cached
        with CaptureQueriesContext(connection) as captured:
            one()
        queries[cached] = len(captured)
    print(f"identity cache A/B, {len(times[True])} requests each, alternating blocks of {requests // blocks}:")
    for cached in (False, True):
        print(f"- cache {'on ' if cached else 'off'}: p50 {percentile(times[cached], 0.5) * 1000:.2f} ms, "
              f"p99 {percentile(times[cached], 0.99) * 1000:.2f} ms, CPU {cpu[cached] / len(times[cached]) * 1000:.2f}"
              f" ms/request, {queries[cached]} SQL statements (Django's cursors)")
    print(f"on/off p50 ratio: {percentile(times[True], 0.5) / percentile(times[False], 0.5):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=["gateway", "django"], default="gateway")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--number", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--queries", action="store_true", help="print the SQL of one request (Django's cursors "
                        "only: the metering statements sent in psycopg's pipeline are not listed)")
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (pstats format)")
    parser.add_argument("--identity-cache-ab", action="store_true",
                        help="compare the gateway path with the SAE identity cache off and on, same run")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after the warm-up, as the gunicorn workers do after loading the portal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qxaas-gwprof-") as tmp:
        tmp_path = Path(tmp)
        var = tmp_path / "var"
        var.mkdir()
        twin, endpoints = start_twin(tmp_path / "twin", 200.0)
        db = None
        try:
            db = TemporaryDatabase(var)
            setup_django(var, db.url, tmp_path / "twin")
            creds = tmp_path / "creds"
            creds.mkdir()
            saes = make_tenants(endpoints, {"prof": [("prof-a", "CAIT"), ("prof-b", "CAIT")]}, 10**15, creds)
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding
            from django.test import Client

            pem = Path(saes["prof-a"].cert).read_bytes()
            der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
            body = {"number": args.number, "size": args.size}
            if args.path == "django":
                client = Client(HTTP_HOST="127.0.0.1", **{"gunicorn.socket": PeerSocket(der)})

                def one() -> float:
                    t0 = time.perf_counter()
                    response = client.post("/api/v1/keys/prof-b/enc_keys", body, content_type="application/json")
                    assert response.status_code == 200, response.content
                    return time.perf_counter() - t0
            else:
                one = gateway_request(der, body)

            for _ in range(20):  # warm-up: connections, caches, imports
                one()
            if args.gc_freeze:
                import gc

                gc.collect()
                gc.freeze()
            if args.identity_cache_ab:
                identity_cache_ab(one, args.requests)
                getattr(one, "close", lambda: None)()
                return 0
            if args.queries:
                from django.db import connection
                from django.test.utils import CaptureQueriesContext

                with CaptureQueriesContext(connection) as queries:
                    one()
                print(f"{len(queries)} SQL statements in one request:")
                for q in queries:
                    print(f"  {q['time']}s  {q['sql'][:160]}")
            cpu0 = time.process_time()
            plain = [one() for _ in range(args.requests)]
            cpu = (time.process_time() - cpu0) / args.requests
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.requests):
                one()
            profile.disable()
            print(f"{args.requests} x enc_keys {args.number} x {args.size} bit in-process ({args.path}) on {db.vendor}:"
                  " "
                  f"p50 {percentile(plain, 0.5) * 1000:.2f} ms, p99 {percentile(plain, 0.99) * 1000:.2f} ms "
                  f"(without the profiler); this process's CPU {cpu * 1000:.2f} ms per request (the portal's own work, "
                  "not the waits on the database and the KME: steadier than wall time on a shared machine)")
            if args.dump:
                profile.dump_stats(args.dump)
            stats = pstats.Stats(profile)
            # Round trips to the database: psycopg waits once per server answer (each statement, BEGIN, COMMIT,
            # SAVEPOINT, Django's health-check SELECT 1, the COPY's phases), whatever logs the SQL.
            waits = sum(v[1] for k, v in stats.stats.items()
                        if k[2] == "wait" and k[0].endswith(("psycopg/connection.py", "psycopg\\connection.py")))
            stats.strip_dirs()
            print(f"database round trips (psycopg waits) per request: {waits / args.requests:.1f}")
            stats.sort_stats(args.sort).print_stats(args.top)
            getattr(one, "close", lambda: None)()
        finally:
            if db is not None:
                db.drop()
            stop_process(twin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
