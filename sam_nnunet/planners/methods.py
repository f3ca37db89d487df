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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
      min_tokens: fewest tokens per axis a planned patch may have.
    """
    stride: Tuple[int, int, int]
    windows: Tuple[int, ...] = ()
    window_split: bool = True
    min_tokens: int = 4

    def computed_tokens(self, axis: int, length: int) -> int:
        """Tokens the network computes along ``axis`` for a patch ``length`` voxels long (padding included)."""
        tokens = math.ceil(length / self.stride[axis])
        padded = [window_layout((tokens, 1, 1), w, False).padded[0] if self.window_split else math.ceil(tokens / w) * w
                  for w in self.windows]
        return max([tokens] + padded)

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
        if self.windows:
            how = "equal windows of at most" if self.window_split else "windows of"
            text += f", {how} {' / '.join(f'{w}^3' for w in self.windows)} tokens"
        return text + f", at least {self.min_tokens} tokens per axis"


@dataclass(frozen=True)
class MethodProfile:
    """Planning knowledge of one trainer.

    Arguments:
      trainer: the trainer's class name (``-tr``).
      grid: function of the network's arch kwargs (the trainer's ``network_kwargs`` plus ``arch_kwargs``'s)
        returning its TokenGrid.
      arch_kwargs: function of the configuration's spacing returning network arguments the plan decides (written
        into the plans' ``arch_kwargs``; the trainer keeps them), or None.
      deep_supervision_scales: function of the arch kwargs returning the trainer's deep-supervision scales (finest
        first), or None for a trainer without deep supervision.
      default_encoder: encoder sized when the user names none (None: the trainer's family default).
    """
    trainer: str
    grid: Callable[[Dict], TokenGrid]
    arch_kwargs: Optional[Callable[[Sequence[float]], Dict]] = None
    deep_supervision_scales: Optional[Callable[[Dict], List[List[float]]]] = None
    default_encoder: Optional[str] = None


METHOD_PROFILES: Dict[str, MethodProfile] = {}

# any patch length: for trainers that registered no profile
UNALIGNED_GRID = TokenGrid(stride=(1, 1, 1), min_tokens=16)


def register_method_profile(profile: MethodProfile) -> None:
    METHOD_PROFILES[profile.trainer] = profile


def get_method_profile(trainer: str) -> Optional[MethodProfile]:
    return METHOD_PROFILES.get(trainer)


# ---- SAMAdapterTrainer (3DSAM-adapter) -----------------------------------------------------------------------------
def _sam_adapter_grid(kwargs: Dict) -> TokenGrid:
    # SAM's 16-pixel patches on a x4-upsampled patch and 16 upsampled slices per token give tokens of 4^3 voxels;
    # every block attends in 3D windows split equally with at most max_window tokens per axis
    from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork

    stride = SAMAdapterNetwork.slices_per_token // SAMAdapterNetwork.upsample
    return TokenGrid(stride=(stride,) * 3, windows=(kwargs.get("max_window", 8),), min_tokens=4)


register_method_profile(MethodProfile("SAMAdapterTrainer", _sam_adapter_grid))


# ---- SAM3DMedTrainer (3DMedSAM) ------------------------------------------------------------------------------------
def _sam3dmed_level_strides(spacing: Sequence[float]) -> Dict:
    # the trainer's rule (plan_token_levels): decoder levels are the first stages of nnU-Net's own U-Net pooling at
    # this spacing (anisotropic axes pooled later), until tokens are at least 4 voxels in-plane. The token-count cap
    # the trainer applies to nnU-Net's plans is left out: here the memory budget bounds the patch.
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from sam_nnunet.networks.sam3dmed import plan_token_levels

    inverse = [1 / s for s in spacing]
    reference = [round(i * (256 ** 3 / math.prod(inverse)) ** (1 / 3)) for i in inverse]
    _, pools, _, reference, _ = get_pool_and_conv_props(list(spacing), reference, 4, 999999)
    return {"level_strides": plan_token_levels(reference, pools, max_tokens=math.prod(reference))}


def _sam3dmed_grid(kwargs: Dict) -> TokenGrid:
    stride = tuple(math.prod(int(f[a]) for f in kwargs["level_strides"]) for a in range(3))
    return TokenGrid(stride=stride, windows=(kwargs.get("local_window", 8), kwargs.get("global_window", 16)),
                     min_tokens=4)


def _sam3dmed_scales(kwargs: Dict) -> List[List[float]]:
    from sam_nnunet.networks.sam3dmed import deep_supervision_scales
    return deep_supervision_scales(kwargs["level_strides"])


register_method_profile(MethodProfile("SAM3DMedTrainer", _sam3dmed_grid, _sam3dmed_level_strides, _sam3dmed_scales))
