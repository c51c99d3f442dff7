"""``python -m services.gateway``: the portal's HTTPS listener (ETSI 014 key gateway), until SIGINT/SIGTERM.

    python -m services.gateway --port 8443 [--upstream http://127.0.0.1:8000] [--processes 1] [--threads 8]

TLS with the portal's server certificate; a client certificate is optional at the TLS layer and, when given,
must chain to the portal CA. ``--processes N`` starts N processes on the same port (SO_REUSEPORT), each
with its own event loop and database pool, under a parent that starts a new one when one dies.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time

CRASH_LOOP_RESTARTS = 5  # restarts of serving processes within the window before the parent gives up
CRASH_LOOP_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
    from services.gateway.metrics import ContextAccessLogger

    app = build_app(Gateway(threads=args.threads, upstream=args.upstream))
    runner = web.AppRunner(app, access_log=logging.getLogger("services.gateway.access"),
                           access_log_class=ContextAccessLogger, access_log_format='%a "%r" %s %b %Tfs',
                           handle_signals=False)
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


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by kill -9 (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def fork_server(args: argparse.Namespace, sock: socket.socket) -> int:
    """A serving process on ``sock``; returns its pid (in the parent)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            for sig in (signal.SIGINT, signal.SIGTERM):  # the event loop installs its own handlers
                signal.signal(sig, signal.SIG_DFL)
            run(args, sock)
        except BaseException:  # a child never returns into the parent's code
            logging.getLogger(__name__).exception("key gateway process %s failed", os.getpid())
            code = 1
        finally:
            os._exit(code)
    return pid


def supervise(args: argparse.Namespace, sock: socket.socket) -> int:
    """The parent of ``--processes N`` (N > 1): N serving children, each restarted when it dies (backoff from
    0 s doubling to 5 s), until SIGINT/SIGTERM, which it forwards. A child dying ``CRASH_LOOP_RESTARTS`` times
    within ``CRASH_LOOP_WINDOW_S`` ends the parent with status 1 (its own supervisor then decides)."""
    log = logging.getLogger(__name__)
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    children: dict[int, float] = {}  # pid -> start time
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(args.processes):
        children[fork_server(args, sock)] = time.monotonic()
    restarts: collections.deque[float] = collections.deque()
    backoff, due, code, restart_at = 0.0, 0, 0, 0.0
    while children or (due and not stopping):
        try:
            pid, status = os.waitpid(-1, os.WNOHANG) if children else (0, 0)
        except ChildProcessError:  # none left to wait for (reaped elsewhere): forget them
            children.clear()
            continue
        now = time.monotonic()
        if pid == 0:
            if due and not stopping and now >= restart_at:
                new = fork_server(args, sock)
                children[new] = now
                due -= 1
                log.warning("key gateway process %s started in place of a dead one", new)
                restart_at = now + backoff
            time.sleep(0.1)
            continue
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        cause = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                 else f"exited with status {os.waitstatus_to_exitcode(status)}")
        backoff = 0.0 if now - started > CRASH_LOOP_WINDOW_S else min(max(backoff * 2, 0.5), 5.0)
        while restarts and now - restarts[0] > CRASH_LOOP_WINDOW_S:
            restarts.popleft()
        if len(restarts) >= CRASH_LOOP_RESTARTS:
            log.error("key gateway process %s %s: %d restarts within %.0f s, giving up", pid, cause,
                      len(restarts), CRASH_LOOP_WINDOW_S)
            stop(signal.SIGTERM, None)
            code = 1
            continue
        restarts.append(now)
        log.warning("key gateway process %s %s; starting another in %.1f s", pid, cause, backoff)
        if not due:
            restart_at = now + backoff
        due += 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.base")
    import django

    django.setup()
    tls_context()  # fail now, in the parent, when the certificate cannot be loaded
    sock = listening_socket(args.host, args.port)
    if args.processes > 1:
        return supervise(args, sock)
    run(args, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
