"""The outputs of ``sam-nnunet learning-curve`` beside its results JSON: the Markdown table and the chart (moved
out of evaluation.learning_curve unchanged)."""
import os
from typing import Dict, List, Optional, Tuple

from sam_nnunet.evaluation.machine import machine_line
from sam_nnunet.evaluation.results_file import write_results
from sam_nnunet.trainers.checkpoints import atomic_write


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _labels(value: Optional[Dict], digits: int) -> str:
    return " / ".join(_fmt(value[k], digits) for k in sorted(value, key=str)) if value else "–"


def _shown_trainer(r: Dict) -> str:
    return r["trainer"] + (f" [{r['cache']}]" if r.get("cache") else "")


def markdown_table(result: Dict) -> str:
    s = result["settings"]
    runs = sorted(result["runs"], key=lambda r: (_shown_trainer(r), r["clicks"], r["n_train"], r["seed"]))
    labels = sorted(runs[0]["dice"], key=str) if runs else []
    lines = [f"Test set: {len(result['test_cases'])} cases ({result['test_selection']}). Budget per run: "
             f"{s['budget_seconds']:g} s of training iterations, one training per (trainer, n, seed). "
             f"Machine: {machine_line(result['machine'])}; commit {result.get('commit')}.",
             "", f"Per label ({' / '.join(labels)}): Dice, NSD@{s['tolerance']:g}mm, HD95 (mm). "
                 "*Set-up counted*: the same budget counted from the start of the training (set-up, e.g. the "
                 "embedding-cache build, inside it); [cacheK-first]: K copies per case, the cache built before the "
                 "budget's first clock starts (else filled as drawn, inside it); where it stopped at most 1 % of "
                 "the iterations earlier, its Dice is the final checkpoint's (not predicted again).", "",
             "| trainer | encoder | clicks | n | seed | iterations | Dice | NSD | HD95 | wall s | set-up s (cache) | "
             "iterations, set-up counted | Dice, set-up counted |",
             "|---|---|---:|---:|---:|---:|---|---|---|---:|---|---:|---|"]
    for r in runs:
        w = r.get("with_setup") or {}
        lines.append(
            f"| {_shown_trainer(r)} | {r['encoder'] or '–'} | {r['clicks'] or 'auto'} | {r['n_train']} | "
            f"{r['seed']} | "
            f"{r['iterations']} | {_labels(r['dice'], 3)} | {_labels(r['nsd'], 3)} | {_labels(r['hd95'], 2)} | "
            f"{_fmt(r['wall_seconds'], 0)} | {_fmt(r['setup_seconds'], 1)} ({_fmt(r['cache_build_seconds'], 1)}) | "
            f"{w.get('iterations', '–')} | {_labels(w.get('dice'), 3)} |")
    if result.get("failures"):
        lines += ["", "Failed in the last invocation: " + "; ".join(
            f"{f['trainer']} n={f['n_train']} seed={f['seed']}" for f in result["failures"])]
    return "\n".join(lines) + "\n"


def write_chart(result: Dict, path: str) -> None:
    """Foreground-mean Dice against n_train, one line per (trainer, clicks) (mean over seeds; bars: min-max);
    dashed: the reading with the set-up counted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, Dict[int, List[Tuple[float, Optional[float]]]]] = {}
    for r in result["runs"]:
        name = _shown_trainer(r) + (f" ({r['encoder']})" if r["encoder"] else "") + \
            (f", {r['clicks']} click(s)" if r["clicks"] else "")
        second = (r.get("with_setup") or {}).get("foreground_dice")
        series.setdefault(name, {}).setdefault(r["n_train"], []).append((r["foreground_dice"], second))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = f"C{i % 10}"
        ns = sorted(points)
        mean = [sum(v[0] for v in points[n]) / len(points[n]) for n in ns]
        low = [m - min(v[0] for v in points[n]) for m, n in zip(mean, ns)]
        high = [max(v[0] for v in points[n]) - m for m, n in zip(mean, ns)]
        ax.errorbar(ns, mean, yerr=[low, high], marker="o", color=colour, label=name, capsize=3)
        if all(v[1] is not None for n in ns for v in points[n]):
            ax.plot(ns, [sum(v[1] for v in points[n]) / len(points[n]) for n in ns], ls="--", color=colour, alpha=0.6)
    s = result["settings"]
    ax.set_xlabel("training cases")
    ax.set_ylabel("test Dice (mean over labels)")
    ax.set_title(f"{len(result['test_cases'])} test cases, {s['budget_seconds']:g} s per run (dashed: set-up counted)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)


def write_outputs(result: Dict, json_path: str) -> None:
    """The JSON (atomically, the one it replaces kept as .bak), then the table and the chart beside it."""
    write_results(json_path, result)
    base = os.path.splitext(json_path)[0]
    with atomic_write(base + ".md") as f:
        f.write(markdown_table(result).encode())
    write_chart(result, base + ".png")
