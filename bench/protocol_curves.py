"""Figures for docs/physics.md: simulated (protocol mode) points against the analytical curves.

Run:  .venv/bin/python bench/protocol_curves.py      (about 10 s; writes docs/img/*.svg and prints the data)

- dv_qber_vs_loss.svg: decoy BB84 QBER vs channel loss, simulated vs E_mu of the model;
- dv_key_rate_vs_loss.svg: secret key rate vs loss: asymptotic GLLP model, protocol-mode and statistical-mode blocks;
- cv_key_vs_excess_noise.svg: CV-QKD bits per symbol vs excess noise (injected by an attack), estimate vs GG02.
Plain SVG is written by hand, so no plotting library is needed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.sdqkd.physics.analytical import LinkParams, performance
from services.sdqkd.physics.attacks import AttackConfig
from services.sdqkd.physics.pipeline import PipelineConfig, block_size_for, run_block, run_statistical_block

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def svg_plot(
    path: Path, title: str, xlabel: str, ylabel: str, series: list[dict], log_y: bool = False,
    legend_bottom: bool = False,
) -> None:
    """series: {"label", "x", "y", "style": "line"|"points"}."""
    width, height, left, right, top, bottom = 640, 420, 70, 20, 40, 55
    xs = [x for s in series for x in s["x"]]
    ys = [y for s in series for y in s["y"] if (y > 0 or not log_y)]
    x0, x1 = min(xs), max(xs)
    if log_y:
        y0, y1 = 10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys)))
    else:
        y0, y1 = 0.0, max(ys) * 1.1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        frac = (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) if log_y else (y - y0) / (y1 - y0)
        return height - bottom - frac * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">{xlabel}</text>',
           f'<text x="18" y="{height / 2}" text-anchor="middle" transform="rotate(-90 18 {height / 2})">{ylabel}'
           f'</text>']
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    ticks = ([10**e for e in range(round(math.log10(y0)), round(math.log10(y1)) + 1)] if log_y
             else [y0 + (y1 - y0) * i / 5 for i in range(6)])
    for y in ticks:
        out.append(f'<line x1="{left - 4}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        pts = [(px(x), py(y)) for x, y in zip(s["x"], s["y"], strict=True) if y > 0 or not log_y]
        if s["style"] == "line":
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        else:
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{color}"/>' for a, b in pts]
        ly = (height - bottom - 10 - 18 * (len(series) - 1 - k)) if legend_bottom else top + 10 + 18 * k
        out.append(f'<rect x="{width - right - 230}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{width - right - 212}" y="{ly + 1}">{s["label"]}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = LinkParams.from_mapping({})
    losses = [2, 6, 10, 14, 18, 22, 26]
    curve_x = [x / 2 for x in range(4, 57)]
    model_qber = [performance(base.with_changes(total_loss_db=x)).qber for x in curve_x]
    model_rate = [performance(base.with_changes(total_loss_db=x)).secret_key_rate_bps for x in curve_x]
    sim_qber, sim_rate, stat_rate = [], [], []
    print("loss_dB  QBER_sim  QBER_model  SKR_protocol  SKR_statistical  SKR_model")
    for loss in losses:
        params = base.with_changes(total_loss_db=float(loss))
        size = block_size_for(params, 300_000)
        r = run_block(params, block_size=size, seed=loss)
        s = run_statistical_block(params, block_size=size, seed=loss)
        sim_qber.append(r.telemetry["qber"])
        sim_rate.append(r.telemetry["secret_key_rate_bps"])
        stat_rate.append(s.telemetry["secret_key_rate_bps"])
        print(f"{loss:7} {sim_qber[-1]:9.4f} {performance(params).qber:11.4f} {sim_rate[-1]:13.4g} "
              f"{stat_rate[-1]:16.4g} {performance(params).secret_key_rate_bps:10.4g}")
    svg_plot(OUT / "dv_qber_vs_loss.svg", "Decoy BB84: QBER vs channel loss", "channel loss (dB)", "QBER",
             [{"label": "model E_mu", "x": curve_x, "y": model_qber, "style": "line"},
              {"label": "protocol mode (sample)", "x": losses, "y": sim_qber, "style": "points"}],
             legend_bottom=True)
    svg_plot(OUT / "dv_key_rate_vs_loss.svg", "Decoy BB84: secret key rate vs loss (1 GHz, 3e5 sifted bits/block)",
             "channel loss (dB)", "secret key rate (bit/s)",
             [{"label": "asymptotic model (GLLP)", "x": curve_x, "y": model_rate, "style": "line"},
              {"label": "protocol mode", "x": losses, "y": sim_rate, "style": "points"},
              {"label": "statistical mode", "x": [x + 0.4 for x in losses], "y": stat_rate, "style": "points"}],
             log_y=True)

    cv = LinkParams.for_technology("cv-qkd", length_km=5.0)
    injected = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12]
    xi_curve = [0.01 + i / 100 for i in range(0, 14)]
    k_model = [performance(cv.with_changes(excess_noise=x)).details["K"] for x in xi_curve]
    k_sim = []
    print("\nCV 5 km: xi_true  xi_estimated  K_estimated  K_model")
    for inj in injected:
        r = run_block(cv, AttackConfig(cv_excess_noise_snu=inj), block_size=1_000_000, seed=5,
                      config=PipelineConfig(pe_fraction=0.5))
        k_sim.append(r.telemetry["bits_per_symbol"])
        print(f"{0.01 + inj:8.3f} {r.telemetry['excess_noise_snu']:13.4f} {k_sim[-1]:12.4f} "
              f"{performance(cv.with_changes(excess_noise=0.01 + inj)).details['K']:8.4f}")
    svg_plot(OUT / "cv_key_vs_excess_noise.svg", "CV-QKD 5 km: key per symbol vs excess noise",
             "excess noise xi (SNU)", "K (bits/symbol)",
             [{"label": "GG02 model", "x": xi_curve, "y": k_model, "style": "line"},
              {"label": "protocol (estimated T, xi)", "x": [0.01 + i for i in injected], "y": k_sim,
               "style": "points"}])
    print(f"\nwrote {OUT}/dv_qber_vs_loss.svg, dv_key_rate_vs_loss.svg, cv_key_vs_excess_noise.svg")


if __name__ == "__main__":
    main()
