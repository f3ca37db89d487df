"""What the planner must know about each method beyond its network: the patch sizes its token grid takes without
waste.

Every network of this package accepts any patch (it pads to its token grid and crops back), so a patch that is not
a whole number of tokens, or of attention windows, pays for voxels nobody asked for. A ``TokenGrid`` says which
patch lengths fill the grid exactly; a ``MethodProfile`` ties one to a trainer. Memory needs no profile: it is
traced from the network itself (``sam_nnunet.planners.memory``).

A new method registers one profile here (``register_method_profile``); a trainer without one is still planned
(any patch length, memory traced as for every method), with a warning.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from sam_nnunet.blocks.attention3d import window_layout


@dataclass(frozen=True)
class TokenGrid:
    """How a network cuts one patch axis into tokens and attention windows.

    Arguments:
      stride: voxels per token along each axis (D, H, W: nnU-Net's transposed axes, D first).
      max_window: tokens per attention window along each axis, or None for no windows (global attention).
      window_split: True if windows are the fewest equal windows of at most ``max_window`` tokens
        (``blocks.attention3d.window_layout``); False if windows have exactly ``max_window`` tokens and the grid is
        padded to a multiple (SAM's own 2D window attention).
      min_tokens: fewest tokens per axis a planned patch may have.
    """
    stride: Tuple[int, int, int]
    max_window: Optional[Tuple[int, int, int]] = None
    window_split: bool = True
    min_tokens: int = 4

    def computed_tokens(self, axis: int, length: int) -> int:
        """Tokens the network computes along ``axis`` for a patch ``length`` voxels long (padding included)."""
        tokens = math.ceil(length / self.stride[axis])
        if self.max_window is None:
            return tokens
        window = self.max_window[axis]
        if self.window_split:
            return window_layout((tokens, 1, 1), window, False).padded[0]
        return math.ceil(tokens / window) * window

    def fits(self, axis: int, length: int) -> bool:
        """True if the patch length is a whole number of tokens that fill their windows exactly."""
        return length % self.stride[axis] == 0 and length // self.stride[axis] >= self.min_tokens and \
            self.computed_tokens(axis, length) == length // self.stride[axis]

    def round_up(self, axis: int, length: int) -> int:
        """The smallest fitting length >= ``length``."""
        length = max(int(length), self.min_tokens * self.stride[axis])
        while not self.fits(axis, length):
            length += 1
        return length

    def next_smaller(self, axis: int, length: int) -> Optional[int]:
        """The largest fitting length < ``length``, or None below the minimum."""
        length -= 1
        while length >= self.min_tokens * self.stride[axis]:
            if self.fits(axis, length):
                return length
            length -= 1
        return None

    def describe(self) -> str:
        text = f"tokens of {'x'.join(map(str, self.stride))} voxels"
        if self.max_window is not None:
            how = "equal windows of at most" if self.window_split else "windows of"
            text += f", {how} {'x'.join(map(str, self.max_window))} tokens"
        return text + f", at least {self.min_tokens} tokens per axis"


@dataclass(frozen=True)
class MethodProfile:
    """Planning knowledge of one trainer.

    Arguments:
      trainer: the trainer's class name (``-tr``).
      grid: function of the trainer's ``network_kwargs`` returning the network's TokenGrid.
      default_encoder: encoder sized when the user names none (None: the trainer's family default).
    """
    trainer: str
    grid: Callable[[Dict], TokenGrid]
    default_encoder: Optional[str] = None


METHOD_PROFILES: Dict[str, MethodProfile] = {}

# any patch length: for trainers that registered no profile
UNALIGNED_GRID = TokenGrid(stride=(1, 1, 1), max_window=None, min_tokens=16)


def register_method_profile(profile: MethodProfile) -> None:
    METHOD_PROFILES[profile.trainer] = profile


def get_method_profile(trainer: str) -> Optional[MethodProfile]:
    return METHOD_PROFILES.get(trainer)


def _sam_adapter_grid(network_kwargs: Dict) -> TokenGrid:
    # 3DSAM-adapter: SAM's 16-pixel patches on a x4-upsampled patch and 16 upsampled slices per token give tokens
    # of 4^3 voxels; every block attends in 3D windows split equally with at most max_window tokens per axis
    from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork

    stride = SAMAdapterNetwork.slices_per_token // SAMAdapterNetwork.upsample
    window = network_kwargs.get("max_window", 8)
    return TokenGrid(stride=(stride,) * 3, max_window=(window,) * 3, window_split=True, min_tokens=4)


register_method_profile(MethodProfile("SAMAdapterTrainer", _sam_adapter_grid))
