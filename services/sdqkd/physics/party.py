"""Run one end of a link for one block in its own process, over TCP.

    python -m services.sdqkd.physics.party --role alice --listen 127.0.0.1:0 --technology e91 --seed 7 ...
    python -m services.sdqkd.physics.party --role bob --connect 127.0.0.1:PORT --technology e91 --seed 7 ...

The quantum layer is simulated from ``--seed`` (it stands for the quantum channel, which both ends share
physically); each process keeps only its own end's record and learns everything else from classical messages.
Prints one JSON line: the SHA-256 of the final key (never the key), its length, aborted flag and the QBER. Alice
prints ``{"listening": port}`` first when listening.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys

import numpy as np

from .analytical import LinkParams
from .attacks import NO_ATTACK
from .channel import SocketChannel
from .pipeline import DEFAULT_CONFIG, AliceSide, BobSide, simulate_quantum_layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("alice", "bob"), required=True)
    parser.add_argument("--listen", help="host:port to listen on (alice)")
    parser.add_argument("--connect", help="host:port to connect to (bob)")
    parser.add_argument("--technology", default="dv-bb84-decoy")
    parser.add_argument("--params", default="{}", help="JSON mapping of LinkParams fields")
    parser.add_argument("--block-size", type=int, required=True, help="pulses / pairs / symbols")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    params = LinkParams.from_mapping({**json.loads(args.params), "technology": args.technology})
    seq = np.random.SeedSequence(args.seed)
    quantum_seed, alice_seed, bob_seed = seq.spawn(3)
    alice_rec, bob_rec = simulate_quantum_layer(params, NO_ATTACK, args.block_size,
                                                np.random.default_rng(quantum_seed))
    if args.role == "alice":
        del bob_rec  # this process is Alice: Bob's record is not hers to keep
        host, port = args.listen.rsplit(":", 1)
        server = socket.create_server((host, int(port)))
        server.settimeout(args.timeout)
        print(json.dumps({"listening": server.getsockname()[1]}), flush=True)
        conn, _ = server.accept()
        server.close()
        party = AliceSide(params, alice_rec, alice_seed.generate_state(1)[0], DEFAULT_CONFIG)
    else:
        del alice_rec
        host, port = args.connect.rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=args.timeout)
        party = BobSide(params, bob_rec, bob_seed.generate_state(1)[0], DEFAULT_CONFIG)
    channel = SocketChannel(conn, default_timeout=args.timeout)
    try:
        result = party.run(channel)
    finally:
        channel.close()
    print(json.dumps({
        "role": args.role, "aborted": result.aborted, "final_bits": len(result.key) * 8,
        "key_sha256": hashlib.sha256(result.key).hexdigest(), "qber": result.telemetry.get("qber"),
        "bytes_sent": channel.bytes_sent, "bytes_received": channel.bytes_received,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
