"""Relative-position tables of SAM's attention, fitted to a smaller 3D window."""
import torch

from sam_nnunet.encoders.surgery import resize_rel_pos


def rel_pos_for_window(table: torch.Tensor, window: int) -> torch.Tensor:
    """The rows of a decomposed relative-position table (L, C) for distances -(window-1) .. window-1.

    SAM's table holds one row per token distance (-(L-1)/2 .. (L-1)/2). When the window is no larger than the
    table covers, the central 2 * window - 1 rows are taken: a distance of one token keeps its pretrained meaning
    (SAM's own ``get_rel_pos`` would instead stretch the table over the window, i.e. rescale every distance).
    A table too short for the window (the tiny test encoder) is interpolated to 2 * window - 1 rows.
    """
    if table.ndim != 2:
        raise ValueError(f"expected an (L, C) relative position table, got shape {tuple(table.shape)}")
    need = 2 * int(window) - 1
    length = table.shape[0]
    if length < need or length % 2 == 0:
        return resize_rel_pos(table, need)
    start = (length - 1) // 2 - (int(window) - 1)
    return table[start:start + need]
