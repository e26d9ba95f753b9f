"""The dashboard's AP-vs-bits plot: per task, each quantized row's AP difference to its FP32
parent and to its control, against the bit width.

Example:
    plot_ap_vs_bits(collect_runs(["experiments/lowbit"]), "experiments/dashboard_ap_vs_bits.png")
"""
import os

from .comparisons import (ap_delta, parse_bits, records_by_id, run_id, superseded_by,
                          trained_iterations)

FP32_BITS = 32


def is_ablation(run):
    """True for a row that changes one knob of a recipe to measure it: `meta.ablation` true, or a
    comment starting with "ablation" (the convention of experiments/lowbit.yaml)."""
    meta = run["meta"]
    return bool(meta.get("ablation")) or str(meta.get("comment", "")).lower().startswith("ablation")


def plot_series(records, task):
    """The plot's data for one task: ({(variant, method, scope, run set, iterations,
    "parent"|"control"): [(weight bits, AP difference), ...]}, [(weight bits, AP difference,
    method, which), ...] for the ablation rows). Superseded rows, FP32 rows and rows without a
    reference are left out."""
    by_id, newer = records_by_id(records), superseded_by(records)
    lines, ablations = {}, []
    for run in records:
        meta = run["meta"]
        w_bits = parse_bits(meta.get("bits", "32/32"))[1]
        if meta.get("task", "?") != task or w_bits >= FP32_BITS or run_id(run) in newer:
            continue
        key = (str(meta.get("variant", "")), str(meta.get("quant", "")), str(meta.get("scope", "")),
               run_id(run).split("/")[0], trained_iterations(run))  # lengths never share a line
        for which in ("parent", "control"):
            delta = ap_delta(run, by_id, which)
            if delta is None:
                continue
            if is_ablation(run):
                ablations.append((w_bits, delta, key[1], which))
            else:
                lines.setdefault(key + (which,), []).append((w_bits, delta))
    return lines, ablations


def plot_ap_vs_bits(records, path):
    """Write a PNG: one panel per task, the AP difference of each quantized row to its own FP32
    parent against the bit width (A=W; a mixed A/W row at its weight bits), one colour per
    variant and one marker per method. Solid lines: difference to the parent; dashed with hollow
    markers: to the control, where the row has one.
    One line per variant, method, scope, run set and training length (a demo row never joins a
    sweep line, a 1500-iteration row never joins a 500-iteration one);
    ablation rows (`is_ablation`) are grey points that join no line, so a sweep line has one point
    per bit width; superseded rows and rows without a parent are left out (`plot_series`).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({run["meta"].get("task", "?") for run in records}) or ["(no runs)"]
    variants = sorted({str(run["meta"].get("variant", "")) for run in records})
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    methods = sorted({str(run["meta"].get("quant", "")) for run in records})
    markers = {m: "osD^vP*X"[i % 8] for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 6), squeeze=False, dpi=80)
    for ax, task in zip(axes[0], tasks):
        lines, ablations = plot_series(records, task)
        ax.axhline(0, color="k", lw=0.8)
        for i, (bits, delta, method, which) in enumerate(ablations):
            ax.plot([bits], [delta], marker=markers[method], color="0.55", ls="none",
                    mfc="none" if which == "control" else "0.55",
                    label="ablations (one knob changed; not joined)" if i == 0 else None)
        for (variant, method, scope, run_set, iters, which), points in sorted(lines.items(), key=str):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker=markers[method], color=colours[variant],
                    ls="-" if which == "parent" else "--", mfc="none" if which == "control" else None,
                    label=f"{variant} {method} {scope} [{run_set}{f', {iters} it.' if iters else ''}]"
                          f" vs {which}")
        ax.set(title=task, xlabel="bit width (A=W)", ylabel="AP - AP(FP32 parent or control)")
        ax.set_xticks([1, 2, 3, 4, 5, 6, 8])
        if ax.lines[1:]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
