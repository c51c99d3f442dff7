"""Profile the gateway's hot path in one process: ETSI 014 ``enc_keys`` through the whole Django stack
(middleware, SAE certificate authentication, rate limit, quota check, backend call, quota consume, ledger,
key-ID rows, JSON rendering) against the twin, under cProfile.

The TLS listener is left out (gunicorn's part is the same for any Django view); the SAE certificate reaches
the authentication class the way gunicorn hands it over (``environ["gunicorn.socket"].getpeercert``), so the
authentication code that runs is the production one.

    .venv/bin/python bench/gateway_profile.py [--requests 300] [--number 1] [--size 256] [--top 35]

PostgreSQL when DATABASE_URL names one (a temporary database is created and dropped), else SQLite.
"""

from __future__ import annotations

import argparse
import cProfile
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--number", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--queries", action="store_true", help="print the SQL of one request")
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (pstats format)")
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
            client = Client(HTTP_HOST="127.0.0.1", **{"gunicorn.socket": PeerSocket(der)})
            body = {"number": args.number, "size": args.size}

            def one() -> float:
                t0 = time.perf_counter()
                response = client.post("/api/v1/keys/prof-b/enc_keys", body, content_type="application/json")
                assert response.status_code == 200, response.content
                return time.perf_counter() - t0

            for _ in range(20):  # warm-up: connections, caches, imports
                one()
            if args.gc_freeze:
                import gc

                gc.collect()
                gc.freeze()
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
            print(f"{args.requests} x enc_keys {args.number} x {args.size} bit in-process on {db.vendor}: "
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
        finally:
            if db is not None:
                db.drop()
            stop_process(twin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
