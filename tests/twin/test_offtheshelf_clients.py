"""Off-the-shelf ETSI 014 clients, unmodified, given only an SAE's certificate, key and the CA.

- ``etsi-qkd-014-client`` (PyPI, LIP6 Sorbonne Université), the Python ETSI GS QKD 014 client library.
- ``curl --cert --key --cacert``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
from etsi_qkd_014_client import QKD014Client

MASTER, SLAVE = "sae-cait-1", "sae-rectorado-1"


def client_for(twin, sae: str) -> QKD014Client:
    cert, key = twin.sae_cert(sae)
    return QKD014Client(urlsplit(twin.url(twin.node_of(sae))).netloc, cert, key, twin.ca)


def test_etsi_qkd_014_client_library(madqci):
    master, slave = client_for(madqci, MASTER), client_for(madqci, SLAVE)

    code, status = master.get_status(SLAVE)
    assert code == 200 and status.target_kme_id == "Rectorado" and status.max_sae_id_count > 0

    code, container = master.get_key(SLAVE)  # simplified GET
    assert code == 200 and len(container.keys) == 1
    code, container = master.get_key(SLAVE, number=2, size=512)  # POST
    assert code == 200 and len(container.keys) == 2

    code, fetched = slave.get_key_with_key_IDs(MASTER, [k.key_id for k in container.keys])
    assert code == 200
    assert [k.key for k in fetched.keys] == [k.key for k in container.keys]

    code, error = slave.get_key_with_key_IDs(MASTER, [container.keys[0].key_id])  # replay
    assert code == 400 and error.message


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_with_the_sae_certificate(madqci):
    def curl(sae: str, url: str, *extra: str) -> dict:
        cert, key = madqci.sae_cert(sae)
        out = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "--cert", cert, "--key", key, "--cacert", madqci.ca, *extra, url],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return json.loads(out.stdout)

    keys = curl(MASTER, f"{madqci.url('CAIT')}/api/v1/keys/{SLAVE}/enc_keys", "-H", "Content-Type: application/json",
                "-d", '{"number": 1, "size": 256}')["keys"]
    got = curl(SLAVE, f"{madqci.url('Rectorado')}/api/v1/keys/{MASTER}/dec_keys?key_ID={keys[0]['key_ID']}")
    assert got["keys"][0]["key"] == keys[0]["key"]
