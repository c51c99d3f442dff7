"""Topology files: the shipped ones load; invalid ones are refused with the line and the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.sdqkd.physics.analytical import performance
from services.sdqkd.twin.errors import TopologyError
from services.sdqkd.twin.topology import load_topology, parse_topology

VALID = """\
name: tiny
nodes:
  - {id: A, kme_address: "127.0.0.1:0"}
  - {id: B, kme_address: "127.0.0.1:0"}
links:
  - id: a-b
    endpoints: [A, B]
    technology: dv-bb84-decoy
    physics:
      length_km: 10
    key_store_capacity_bits: 1048576
    block_size_bits: 8192
saes:
  - {id: sae-a, node: A}
  - {id: sae-b, node: B}
"""


@pytest.mark.parametrize("name", ["madqci", "line-8", "mesh-8"])
def test_shipped_topologies_load_and_every_link_makes_key(name):
    topology = load_topology(name)
    assert topology.nodes and topology.saes
    for link in topology.links.values():
        perf = performance(link.params)
        assert perf.secret_key_rate_bps > 1e5, link.id  # fast bring-up: a first block well under a second
        assert 0 <= perf.qber < 0.05


def test_madqci_is_the_madrid_scenario():
    topology = load_topology("madqci")
    assert list(topology.nodes) == ["CAIT", "CCS", "Rectorado"]
    short, long_ = topology.links["cait-ccs"], topology.links["ccs-rectorado"]
    assert set(short.endpoints) == {"CAIT", "CCS"} and set(long_.endpoints) == {"CCS", "Rectorado"}
    assert short.params.loss_db <= 3.0 and short.params.attenuation_db_per_km >= 0.3  # O band
    assert long_.params.length_km == 23.0 and abs(long_.params.loss_db - 10.0) < 0.5
    assert long_.params.attenuation_db_per_km <= 0.21  # C band
    assert performance(long_.params).secret_key_rate_bps > performance(short.params).secret_key_rate_bps
    technologies = {link.technology for t in ("line-8", "mesh-8") for link in load_topology(t).links.values()}
    assert technologies == {"dv-bb84-decoy", "e91", "cv-qkd"}


def test_a_valid_file_parses():
    topology = parse_topology(VALID, "tiny.yaml")
    assert topology.links["a-b"].params.length_km == 10
    assert topology.saes["sae-b"].node == "B"


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("endpoints: [A, B]", "endpoints: [A, C]", 7, "links.0.endpoints.1"),
        ("length_km: 10", "length_km: -3", 10, "links.0.physics.length_km"),
        ("length_km: 10", "lenght_km: 10", 10, "links.0.physics.lenght_km"),
        ("technology: dv-bb84-decoy", "technology: bb85", 8, "links.0.technology"),
        ("block_size_bits: 8192", "block_size_bits: 8190", 12, "links.0.block_size_bits"),
        ("{id: sae-b, node: B}", "{id: sae-b, node: Z}", 15, "saes.1.node"),
        ('{id: B, kme_address: "127.0.0.1:0"}', '{id: A, kme_address: "127.0.0.1:0"}', 4, "nodes.1.id"),
        ("    key_store_capacity_bits: 1048576\n", "", 6, "links.0"),
        ("physics:", "physics: [", 11, "yaml"),  # where the parser gives up
        ("block_size_bits: 8192", "block_size_bits: 8192\n    mode: quantum", 13, "links.0.mode"),
        ("block_size_bits: 8192", "block_size_bits: 8192\n    mode: protocol\n    protocol_fraction: 1.5", 14,
         "links.0.protocol_fraction"),
        ("block_size_bits: 8192", "block_size_bits: 8192\n    protocol_fraction: 0.5", 13,
         "links.0.protocol_fraction"),  # only a protocol-mode link samples
        ("block_size_bits: 8192", "block_size_bits: 8192\n    postprocessing_block_bits: 5", 13,
         "links.0.postprocessing_block_bits"),
        ("block_size_bits: 8192", "block_size_bits: 8192\n    moda: protocol", 13, "links.0.moda"),
    ],
)
def test_invalid_files_name_the_line_and_the_field(old, new, line, field):
    text = VALID.replace(old, new)
    assert text != VALID
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "tiny.yaml")
    assert (info.value.line, info.value.field) == (line, field), str(info.value)
    assert str(info.value).startswith(f"tiny.yaml:{line}: {field}: ")


def test_the_command_refuses_an_invalid_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("node: B}", "node: Q}"))
    out = subprocess.run([sys.executable, "-m", "services.sdqkd.twin", "--topology", str(bad), "--state-dir",
                          str(tmp_path / "state")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{bad}:15: saes.1.node: unknown node 'Q'" in out.stderr
