"""``python -m services.gateway``: the portal's HTTPS listener (ETSI 014 key gateway), until SIGINT/SIGTERM.

    python -m services.gateway --port 8443 [--upstream http://127.0.0.1:8000] [--processes 1] [--threads 8]

TLS with the portal's server certificate; a client certificate is optional at the TLS layer and, when given,
must chain to the portal CA. ``--processes N`` starts N processes on the same port (SO_REUSEPORT), each
with its own event loop and database pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ETSI_HTTPS_PORT", "8443")))
    parser.add_argument("--upstream", default=None, help="the web listener other paths are forwarded to")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8, help="database threads per process")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def tls_context() -> ssl.SSLContext:
    from django.conf import settings

    from services import pki

    if settings.ETSI_TLS_CERT:  # the operator's own certificate (a public name); SAEs still use the portal CA
        cert, key = settings.ETSI_TLS_CERT, settings.ETSI_TLS_KEY or settings.ETSI_TLS_CERT
    else:
        cert, key = pki.server_certificate()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.pki_dir() / "ca.crt"))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL  # the certificate is one of two credentials (the other: a token)
    return context


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve(args: argparse.Namespace, sock: socket.socket) -> None:
    from aiohttp import web

    from services.gateway.app import Gateway, build_app

    app = build_app(Gateway(threads=args.threads, upstream=args.upstream))
    runner = web.AppRunner(app, access_log=logging.getLogger("services.gateway.access"),
                           access_log_format='%a "%r" %s %b %Tfs', handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=tls_context()).start()
    logging.getLogger(__name__).info("key gateway on https://%s:%s (pid %s)", args.host, args.port, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Start-up objects live as long as the process: keep the cyclic collector off them (see gunicorn_conf).
    gc.collect()
    gc.freeze()
    await stop.wait()
    await runner.cleanup()


def run(args: argparse.Namespace, sock: socket.socket) -> None:
    try:  # uvloop when installed: about twice the requests per core of the default loop
        import uvloop
    except ImportError:
        asyncio.run(serve(args, sock))
    else:
        uvloop.run(serve(args, sock))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.base")
    import django

    django.setup()
    tls_context()  # fail now, in the parent, when the certificate cannot be loaded
    sock = listening_socket(args.host, args.port)
    children = []
    for _ in range(max(args.processes, 1) - 1):
        pid = os.fork()
        if pid == 0:
            run(args, sock)
            os._exit(0)
        children.append(pid)

    def forward_signal(signum, _frame) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    if children:
        signal.signal(signal.SIGTERM, forward_signal)
    run(args, sock)
    forward_signal(signal.SIGTERM, None)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
