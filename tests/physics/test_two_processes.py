"""Alice and Bob as two real processes exchanging classical messages over TCP on loopback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("technology", "block_size"), [("dv-bb84-decoy", 8_000_000), ("e91", 4_000_000),
                                                        ("cv-qkd", 200_000)])
def test_two_processes_agree_on_the_key(technology, block_size):
    common = ["--technology", technology, "--block-size", str(block_size), "--seed", "21", "--timeout", "60"]
    alice = subprocess.Popen(
        [sys.executable, "-m", "services.sdqkd.physics.party", "--role", "alice", "--listen", "127.0.0.1:0",
         *common], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(alice.stdout.readline())["listening"]
        bob = subprocess.run(
            [sys.executable, "-m", "services.sdqkd.physics.party", "--role", "bob", "--connect",
             f"127.0.0.1:{port}", *common], cwd=ROOT, capture_output=True, text=True, timeout=90, check=True)
        alice_out = json.loads(alice.stdout.readline())
        assert alice.wait(timeout=30) == 0
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait(timeout=10)
    bob_out = json.loads(bob.stdout.strip().splitlines()[-1])
    assert not alice_out["aborted"] and not bob_out["aborted"]
    assert alice_out["final_bits"] == bob_out["final_bits"] > 0
    assert alice_out["key_sha256"] == bob_out["key_sha256"]
    # Everything Bob learned came through the socket: what one sent, the other received.
    assert alice_out["bytes_sent"] == bob_out["bytes_received"] > 0
    assert bob_out["bytes_sent"] == alice_out["bytes_received"] > 0
