"""The click-adherence table of ``sam-nnunet interaction`` (beside the Dice table of ``report.interaction_table``):
per trainer and prompt kind, over correction rounds 1..N, the share of correction clicks whose voxel ends with the
clicked class (all, positive, negative), the voxels changed per click and the seconds per correction."""


def _cell(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def adherence_table(result: dict) -> str:
    """Markdown (empty when no row carries adherence: files written before it was measured)."""
    lines = []
    for trainer, by_prompt in result.get("adherence", {}).items():
        for prompt, a in by_prompt.items():
            if not a or a.get("clicks") is None:
                continue
            lines.append(f"| {trainer} | {prompt} | {a['clicks']} | {_cell(a['adherence'])} | "
                         f"{_cell(a['adherence_positive'])} | {_cell(a['adherence_negative'])} | "
                         f"{_cell(a['changed_per_click'], 1)} | {_cell(a.get('seconds_per_correction'), 2)} |")
    if not lines:
        return ""
    head = ["", "Click adherence over the correction rounds: share of correction clicks whose voxel ends with the "
            "clicked class (positive: a class; negative: a removing click), voxels changed per click, seconds per "
            "correction round of a case (cached encoder output, merge and export).", "",
            "| trainer | prompt | correction clicks | adherence | positive | negative | voxels changed per click | "
            "s per correction |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(head + lines) + "\n"
