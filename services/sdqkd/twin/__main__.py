"""``python -m services.sdqkd.twin``: run the SD-QKD network twin until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .errors import TopologyError
from .network import Twin, run_until_signalled
from .topology import load_topology


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.sdqkd.twin", description=__doc__)
    parser.add_argument("--topology", default="madqci", help="madqci (default), line-8, mesh-8 or a YAML path")
    parser.add_argument("--state-dir", default="./var/twin", type=Path, help="key stores and PKI (./var/twin)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="plain HTTP on loopback, SAE identity from the X-SAE-ID header (development only)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every link's key rate")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=None,
                        help="node i listens on N+i (0: ephemeral ports); default: the topology's addresses")
    parser.add_argument("--node", action="append", default=None,
                        help="run only this node (repeatable); the others run in their own processes")
    parser.add_argument("--mode", choices=("protocol", "statistical", "analytical"), default=None,
                        help="run every link in this mode (default: each link's mode from the topology)")
    parser.add_argument("--protocol-workers", type=int, default=2,
                        help="worker processes for protocol-mode blocks (0: protocol links run statistical)")
    parser.add_argument("--protocol-cpu", type=float, default=0.25,
                        help="CPU cores the protocol workers may use in total, shared by the links (default 0.25)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        topology = load_topology(args.topology)
        twin = Twin(topology, args.state_dir, args.host, args.base_port, args.insecure_http, args.time_scale,
                    args.node, protocol_workers=args.protocol_workers, protocol_cpu=args.protocol_cpu,
                    mode=args.mode)
    except (TopologyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_until_signalled(twin, stop)

    try:  # uvloop when installed: about twice the requests per core of the default loop
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
