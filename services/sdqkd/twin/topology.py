"""Topology files: nodes (KMEs), QKD links with their physics, and SAEs, read from YAML with located errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.sdqkd.physics.analytical import LinkParams, PhysicsParameterError

from .errors import TopologyError

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"
TECHNOLOGIES = ("dv-bb84-decoy", "e91", "cv-qkd")
# How a link makes key (docs/twin.md): the full two-party protocol simulation (on a CPU-sustainable sample of its
# blocks unless protocol_fraction says otherwise), counts sampled from the same model, or the analytical rate.
MODES = ("protocol", "statistical", "analytical")
DEFAULT_MODE = "statistical"
DEFAULT_POSTPROCESSING_BLOCK_BITS = 200_000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# ETSI 014 limits every KME announces in `status`, unless the topology's `kme:` section overrides them.
KME_DEFAULTS: dict[str, int] = {
    "key_size": 256,
    "min_key_size": 64,
    "max_key_size": 8192,
    "max_key_per_request": 1024,
    "max_SAE_ID_count": 4,
}


@dataclass(frozen=True)
class NodeSpec:
    id: str
    site: str
    host: str
    port: int


@dataclass(frozen=True)
class LinkSpec:
    id: str
    endpoints: tuple[str, str]
    technology: str
    params: LinkParams
    key_store_capacity_bits: int
    block_size_bits: int
    description: str = ""
    mode: str = DEFAULT_MODE
    # protocol mode: fraction of post-processing blocks run as the full protocol (the rest statistical);
    # None = as many as the twin's protocol CPU budget sustains at the link's rate.
    protocol_fraction: float | None = None
    # sifted (key-candidate) bits per post-processing block, which sets the finite-size effects
    postprocessing_block_bits: int = DEFAULT_POSTPROCESSING_BLOCK_BITS


@dataclass(frozen=True)
class SaeSpec:
    id: str
    node: str


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    nodes: dict[str, NodeSpec]
    links: dict[str, LinkSpec]
    saes: dict[str, SaeSpec]
    kme: dict[str, int] = field(default_factory=lambda: dict(KME_DEFAULTS))

    def links_of(self, node_id: str) -> list[LinkSpec]:
        return [link for link in self.links.values() if node_id in link.endpoints]

    def saes_of(self, node_id: str) -> list[SaeSpec]:
        return [sae for sae in self.saes.values() if sae.node == node_id]


def resolve_topology_path(name_or_path: str) -> Path:
    """A shipped topology by name (``madqci``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    shipped = TOPOLOGY_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        names = sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))
        raise TopologyError(name_or_path, None, "topology", f"no such topology; shipped: {', '.join(names)}")
    return shipped


def load_topology(name_or_path: str) -> Topology:
    path = resolve_topology_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(str(path), None, "file", str(exc)) from exc
    return parse_topology(text, source=str(path))


class _Located:
    """YAML data plus the line of every mapping key / sequence item, so errors can say where."""

    def __init__(self, text: str, source: str):
        self.source = source
        self.lines: dict[tuple, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise TopologyError(source, 1, "file", "empty topology file")
            self.data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise TopologyError(source, mark.line + 1 if mark else None, "yaml", str(exc)) from exc
        finally:
            loader.dispose()
        self._index(root, ())

    def _index(self, node: yaml.Node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                self.lines[(*path, key_node.value)] = key_node.start_mark.line + 1
                self._index(value_node, (*path, key_node.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, (*path, i))

    def error(self, path: tuple, message: str) -> TopologyError:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        field_name = ".".join(str(p) for p in path) or "topology"
        return TopologyError(self.source, self.lines.get(probe), field_name, message)


def _require(doc: _Located, mapping: Mapping, path: tuple, key: str, kind: type | tuple) -> Any:
    if key not in mapping:
        raise doc.error(path, f"missing required field '{key}'")
    value = mapping[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise doc.error((*path, key), f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _parse_address(doc: _Located, path: tuple, value: Any) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise doc.error(path, f"expected 'host:port', got {value!r}")
    host, _, port_text = value.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise doc.error(path, f"invalid port in {value!r}")
    return host, int(port_text)


LINK_FIELDS = {"id", "description", "endpoints", "technology", "physics", "key_store_capacity_bits",
               "block_size_bits", "mode", "protocol_fraction", "postprocessing_block_bits"}


def _parse_mode(doc: _Located, raw: Mapping, path: tuple) -> tuple[str, float | None, int]:
    mode = raw.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise doc.error((*path, "mode"), f"must be one of {', '.join(MODES)}, got {mode!r}")
    fraction = raw.get("protocol_fraction")
    if fraction is not None:
        if mode != "protocol":
            raise doc.error((*path, "protocol_fraction"), "only a link in mode 'protocol' has a protocol_fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise doc.error((*path, "protocol_fraction"), f"must be a number in [0, 1], got {fraction!r}")
        fraction = float(fraction)
    pp_bits = raw.get("postprocessing_block_bits", DEFAULT_POSTPROCESSING_BLOCK_BITS)
    if isinstance(pp_bits, bool) or not isinstance(pp_bits, int) or not 10_000 <= pp_bits <= 10_000_000:
        raise doc.error((*path, "postprocessing_block_bits"), f"must be an integer in [10000, 10000000], "
                                                              f"got {pp_bits!r}")
    if mode == "analytical" and "postprocessing_block_bits" in raw:
        raise doc.error((*path, "postprocessing_block_bits"), "an analytical link has no post-processing blocks")
    return mode, fraction, pp_bits


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    doc = _Located(text, source)
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "the topology must be a mapping with nodes, links and saes")
    unknown = set(data) - {"name", "description", "kme", "nodes", "links", "saes"}
    if unknown:
        key = sorted(unknown)[0]
        raise doc.error((key,), f"unknown field '{key}'")
    name = str(data.get("name") or Path(source).stem)

    kme = dict(KME_DEFAULTS)
    for key, value in (data.get("kme") or {}).items():
        if key not in KME_DEFAULTS:
            raise doc.error(("kme", key), f"unknown KME setting '{key}'")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise doc.error(("kme", key), "must be a positive integer")
        kme[key] = value
    if kme["min_key_size"] % 8 or kme["max_key_size"] % 8 or kme["key_size"] % 8:
        raise doc.error(("kme",), "key sizes must be multiples of 8 bits")
    if not kme["min_key_size"] <= kme["key_size"] <= kme["max_key_size"]:
        raise doc.error(("kme",), "need min_key_size <= key_size <= max_key_size")

    nodes: dict[str, NodeSpec] = {}
    raw_nodes = _require(doc, data, (), "nodes", list)
    if not raw_nodes:
        raise doc.error(("nodes",), "at least one node is needed")
    for i, raw in enumerate(raw_nodes):
        path = ("nodes", i)
        if not isinstance(raw, dict):
            raise doc.error(path, "each node must be a mapping")
        node_id = _require(doc, raw, path, "id", str)
        if not _ID.match(node_id):
            raise doc.error((*path, "id"), f"invalid node id {node_id!r}")
        if node_id in nodes:
            raise doc.error((*path, "id"), f"duplicate node id {node_id!r}")
        host, port = _parse_address(doc, (*path, "kme_address"), raw.get("kme_address", "127.0.0.1:0"))
        nodes[node_id] = NodeSpec(node_id, str(raw.get("site", node_id)), host, port)

    links: dict[str, LinkSpec] = {}
    for i, raw in enumerate(_require(doc, data, (), "links", list)):
        path = ("links", i)
        if not isinstance(raw, dict):
            raise doc.error(path, "each link must be a mapping")
        link_id = _require(doc, raw, path, "id", str)
        if not _ID.match(link_id) or link_id in links:
            raise doc.error((*path, "id"), f"invalid or duplicate link id {link_id!r}")
        endpoints = _require(doc, raw, path, "endpoints", list)
        if len(endpoints) != 2 or endpoints[0] == endpoints[1]:
            raise doc.error((*path, "endpoints"), "a link joins exactly two different nodes")
        for j, end in enumerate(endpoints):
            if end not in nodes:
                raise doc.error((*path, "endpoints", j), f"unknown node {end!r}")
        technology = _require(doc, raw, path, "technology", str)
        if technology not in TECHNOLOGIES:
            raise doc.error((*path, "technology"), f"must be one of {', '.join(TECHNOLOGIES)}")
        physics = _require(doc, raw, path, "physics", dict)
        try:
            params = LinkParams.from_mapping({**physics, "technology": technology})
        except PhysicsParameterError as exc:
            raise doc.error((*path, "physics", exc.field), exc.message) from exc
        capacity = _require(doc, raw, path, "key_store_capacity_bits", int)
        block = _require(doc, raw, path, "block_size_bits", int)
        if block <= 0 or block % 8:
            raise doc.error((*path, "block_size_bits"), "must be a positive multiple of 8")
        if capacity < 2 * block:
            raise doc.error((*path, "key_store_capacity_bits"), "must hold at least two blocks")
        unknown_fields = set(raw) - LINK_FIELDS
        if unknown_fields:
            key = sorted(map(str, unknown_fields))[0]
            raise doc.error((*path, key), f"unknown field '{key}'")
        mode, fraction, pp_bits = _parse_mode(doc, raw, path)
        links[link_id] = LinkSpec(
            link_id, (endpoints[0], endpoints[1]), technology, params, capacity, block,
            str(raw.get("description", "")), mode, fraction, pp_bits,
        )

    saes: dict[str, SaeSpec] = {}
    for i, raw in enumerate(_require(doc, data, (), "saes", list)):
        path = ("saes", i)
        if not isinstance(raw, dict):
            raise doc.error(path, "each SAE must be a mapping")
        sae_id = _require(doc, raw, path, "id", str)
        if not _ID.match(sae_id) or sae_id in saes or sae_id in nodes or sae_id == "qxaas-portal":
            raise doc.error((*path, "id"), f"invalid or duplicate SAE id {sae_id!r}")
        node_id = _require(doc, raw, path, "node", str)
        if node_id not in nodes:
            raise doc.error((*path, "node"), f"unknown node {node_id!r}")
        saes[sae_id] = SaeSpec(sae_id, node_id)

    return Topology(name, str(data.get("description", "")), nodes, links, saes, kme)
