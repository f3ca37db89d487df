"""Which patch lengths a network's token grid takes without waste (SAMPlanner rounds its patches to them).

Every network of this package accepts any patch (it pads to its token grid and crops back), so a patch that is not a
whole number of tokens, or of attention windows, pays for voxels nobody asked for. Each network class declares its
grid (``SAMNetworkBase.token_grid``) from the arguments the plans give it.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from sam_nnunet.blocks.attention3d import window_layout


@dataclass(frozen=True)
class TokenGrid:
    """How a network cuts one patch axis into tokens and attention windows.

    Arguments:
      stride: voxels per token along each axis (D, H, W: nnU-Net's transposed axes, D first).
      windows: the largest attention window of each kind of block, in tokens per axis (empty: no windows). Every
        kind must tile the token grid without padding.
      window_split: True if a block's windows are the fewest equal windows of at most its size
        (``blocks.attention3d.window_layout``); False if windows have exactly that size and the grid is padded to a
        multiple (SAM's own 2D window attention).
      min_tokens: fewest tokens per axis a planned patch may have (one number, or one per axis).
      square: axes the network computes as one square (SAM 2's frames: the in-plane axes, both as long as the
        longer one); a patch without waste has them equal.
    """
    stride: Tuple[int, int, int]
    windows: Tuple[int, ...] = ()
    window_split: bool = True
    min_tokens: Union[int, Tuple[int, int, int]] = 4
    square: Tuple[int, ...] = ()

    def minimum(self, axis: int) -> int:
        """Shortest length along ``axis`` a planned patch may have, in voxels."""
        tokens = self.min_tokens if isinstance(self.min_tokens, int) else self.min_tokens[axis]
        return tokens * self.stride[axis]

    def computed_tokens(self, axis: int, length: int) -> int:
        """Tokens the network computes along ``axis`` for a patch ``length`` voxels long (padding included)."""
        tokens = math.ceil(length / self.stride[axis])
        padded = [window_layout((tokens, 1, 1), w, False).padded[0] if self.window_split else math.ceil(tokens / w) * w
                  for w in self.windows]
        return max([tokens] + padded)

    def fits(self, axis: int, length: int) -> bool:
        """True if the patch length is a whole number of tokens that fill their windows exactly."""
        return length % self.stride[axis] == 0 and length >= self.minimum(axis) and \
            self.computed_tokens(axis, length) == length // self.stride[axis]

    def fits_patch(self, patch: Sequence[int]) -> bool:
        """True if every axis fits and the square axes are equal."""
        return all(self.fits(a, p) for a, p in enumerate(patch)) and len({patch[a] for a in self.square}) <= 1

    def axes_of(self, axis: int) -> Tuple[int, ...]:
        """The axes that change together with ``axis`` (its square, or itself)."""
        return tuple(self.square) if axis in self.square else (axis,)

    def round_up(self, axis: int, length: int) -> int:
        """The smallest fitting length >= ``length`` (for every axis of ``axes_of(axis)``)."""
        axes = self.axes_of(axis)
        length = max([math.ceil(length)] + [self.minimum(a) for a in axes])
        while not all(self.fits(a, length) for a in axes):
            length += 1
        return length

    def next_smaller(self, axis: int, length: int) -> Optional[int]:
        """The largest fitting length < ``length`` (for every axis of ``axes_of(axis)``), or None below the
        minimum."""
        axes = self.axes_of(axis)
        length -= 1
        while length >= max(self.minimum(a) for a in axes):
            if all(self.fits(a, length) for a in axes):
                return length
            length -= 1
        return None

    def describe(self) -> str:
        text = f"tokens of {'x'.join(map(str, self.stride))} voxels"
        if self.windows:
            how = "equal windows of at most" if self.window_split else "windows of"
            text += f", {how} {' / '.join(f'{w}^3' for w in self.windows)} tokens"
        if self.square:
            text += f", axes {' and '.join(map(str, self.square))} equal (square frames)"
        if isinstance(self.min_tokens, int):
            return text + f", at least {self.min_tokens} tokens per axis"
        return text + f", at least {'x'.join(map(str, self.min_tokens))} tokens"


# any patch length: a network that declares no grid
UNALIGNED_GRID = TokenGrid(stride=(1, 1, 1), min_tokens=16)
