"""A bare ETSI 014 ``enc_keys`` proxy: the floor under any gateway written like the portal's, for
``bench/gateway_overhead.py``.

It does what the key gateway does on the wire (TLS in, one kept-alive TLS call to the KME with the same
``AsyncKmeClient``, orjson out, aiohttp on uvloop) and nothing of the rest: no authentication, no rate limit,
no quota, no ledger, no key-ID records, no database. The gap direct -> bare is the cost of one more HTTP hop
through a Python process on this machine; bare -> portal is the cost of what the issue asks the gateway to do.
Not part of the product: it serves one backend SAE (``enc_keys`` as the master, ``dec_keys`` as the slave), to
anybody who can reach it. Several processes may share the port (SO_REUSEPORT), as the key gateway's do.

    python bench/bare_proxy.py --port P --kme URL --master SAE --cert C --key K --ca CA \\
        --server-cert SC --server-key SK
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from aiohttp import web

from services.sdqkd.client import AsyncKmeClient, KmeEndpoint, KmeRejected, KmeUnavailable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("port", "kme", "master", "cert", "key", "ca", "server-cert", "server-key"):
        parser.add_argument(f"--{name}", required=True, type=int if name == "port" else str)
    args = parser.parse_args()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(args.server_cert, args.server_key)

    async def serve() -> None:
        kme = AsyncKmeClient(KmeEndpoint(base_url=args.kme, backend_sae_id=args.master, client_cert=(
            args.cert, args.key), ca_path=args.ca))

        async def enc_keys(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read() or b"{}")
            try:
                keys = await kme.enc_keys(request.match_info["slave"], number=body.get("number", 1),
                                          size=body.get("size", 256))
            except (KmeRejected, KmeUnavailable) as exc:
                return web.Response(body=orjson.dumps({"message": exc.message}), status=503,
                                    content_type="application/json")
            return web.Response(body=orjson.dumps({"keys": [{"key_ID": k.key_id, "key": k.key} for k in keys]}),
                                content_type="application/json")

        async def dec_keys(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read() or b"{}")
            try:
                keys = await kme.dec_keys(request.match_info["master"], [k["key_ID"] for k in body["key_IDs"]])
            except (KmeRejected, KmeUnavailable) as exc:
                return web.Response(body=orjson.dumps({"message": exc.message}), status=503,
                                    content_type="application/json")
            return web.Response(body=orjson.dumps({"keys": [{"key_ID": k.key_id, "key": k.key} for k in keys]}),
                                content_type="application/json")

        app = web.Application()
        app.router.add_post("/api/v1/keys/{slave}/enc_keys", enc_keys)
        app.router.add_post("/api/v1/keys/{master}/dec_keys", dec_keys)
        app.router.add_get("/ready", lambda _request: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=server, reuse_port=True).start()
        await asyncio.Event().wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
