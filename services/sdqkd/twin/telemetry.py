"""Prometheus families for the post-processing blocks of links in mode protocol/statistical.

Gauges describe the link's most recent block (what an operator's dashboard shows: QBER, decoy yields, CHSH S,
excess noise, reconciliation efficiency...); counters count blocks per mode. Samples are left out when the last
block does not have the quantity (e.g. CHSH S on a decoy-BB84 link), as Prometheus exporters do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Family = Callable[[str, str, str, list[tuple[dict[str, str], float]]], None]

# (metric, help, key in the block summary)
BLOCK_GAUGES = (
    ("qkd_link_block_raw_bits", "Raw (detected) bits of the last post-processing block.", "raw_bits"),
    ("qkd_link_block_sifted_bits", "Sifted bits of the last post-processing block.", "sifted_bits"),
    ("qkd_link_block_final_bits", "Final secret bits of the last post-processing block (0 when aborted).",
     "final_bits"),
    ("qkd_link_block_secret_key_rate_bps", "Secret key rate of the last block: final bits per second of link time.",
     "secret_key_rate_bps"),
    ("qkd_link_block_chsh_s", "CHSH S of the last block (E91; no key when S <= 2).", "chsh_s"),
    ("qkd_link_block_excess_noise_snu", "Estimated excess noise of the last block (CV), shot-noise units.",
     "excess_noise_snu"),
    ("qkd_link_block_transmittance", "Estimated channel transmittance of the last block (CV).", "transmittance"),
    ("qkd_link_block_v_mod_snu", "Estimated modulation variance V_mod of the last block (CV), SNU.", "v_mod_snu"),
    ("qkd_link_block_reconciliation_efficiency",
     "Reconciliation efficiency f of the last block (leaked / n H2(e); statistical mode: the modelled f).",
     "reconciliation_efficiency"),
    ("qkd_link_block_frame_error_rate", "Reconciliation frame error rate of the last block (CV).",
     "frame_error_rate"),
    ("qkd_link_block_latency_seconds", "Wall-clock time to post-process the last block, both ends.",
     "block_latency_s"),
    ("qkd_link_block_aborted", "1 when the last block was aborted (no key).", "aborted"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def prometheus_link_blocks(family: Family, views: list[dict[str, Any]]) -> None:
    """Add the block families for the links in ``views`` (``LinkRuntime.telemetry()`` dicts)."""
    sim = [(v, v["protocol"]) for v in views if v.get("protocol")]

    def labels(view: dict[str, Any], **extra: str) -> dict[str, str]:
        return {"link": view["id"], "technology": view["technology"], **extra}

    def last(p: dict[str, Any]) -> dict[str, Any]:
        return p.get("last_block") or {}

    for name, help_text, key in BLOCK_GAUGES:
        samples = []
        for view, p in sim:
            value = _number(last(p).get(key))
            if value is not None:
                samples.append((labels(view, mode=str(last(p).get("mode"))), value))
        family(name, "gauge", help_text, samples)
    qber = []
    for view, p in sim:
        for basis, key in (("all", "qber"), ("Z", "qber_z"), ("X", "qber_x")):
            value = _number(last(p).get(key))
            if value is not None:
                qber.append((labels(view, basis=basis, mode=str(last(p).get("mode"))), value))
    family("qkd_link_block_qber", "gauge", "QBER of the last block, measured on the revealed sample, by basis.", qber)
    decoy = []
    for view, p in sim:
        for quantity, value in (last(p).get("decoy") or {}).items():
            number = _number(value)
            if number is not None:
                decoy.append((labels(view, quantity=quantity), number))
    family("qkd_link_block_decoy_estimate", "gauge",
           "Decoy-state estimates of the last block: gains q_mu/q_nu, vacuum yield y0, single-photon yield y1_lower,"
           " error e1_upper, gain q1_lower.", decoy)
    family("qkd_link_blocks_total", "counter", "Post-processing blocks run, by mode.",
           [(labels(v, mode=m), n) for v, p in sim for m, n in p["blocks"].items()])
    family("qkd_link_blocks_aborted_total", "counter", "Post-processing blocks aborted (no key), by mode.",
           [(labels(v, mode=m), n) for v, p in sim for m, n in p["aborted_blocks"].items()])
    family("qkd_link_protocol_fraction", "gauge", "Fraction of the last 64 blocks run as the full protocol.",
           [(labels(v), p["protocol_fraction_recent"]) for v, p in sim])
    family("qkd_link_attack_active", "gauge", "1 while an attack or fault is injected on the link (admin API).",
           [(labels(v), 1.0 if p["attack_active"] else 0.0) for v, p in sim])
