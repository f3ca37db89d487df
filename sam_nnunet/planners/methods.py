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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

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
      default_encoder: encoder sized when the user names none (None: the trainer's ``default_encoder``, else the
        family default).
      label_kwargs: function of ``has_regions`` (nnU-Net region-based training) returning the network arguments
        the trainer derives from the labels (it writes them into the plans it saves), or None.
    """
    trainer: str
    grid: Callable[[Dict], TokenGrid]
    arch_kwargs: Optional[Callable[[Sequence[float]], Dict]] = None
    deep_supervision_scales: Optional[Callable[[Dict], List[List[float]]]] = None
    default_encoder: Optional[str] = None
    label_kwargs: Optional[Callable[[bool], Dict]] = None


METHOD_PROFILES: Dict[str, MethodProfile] = {}

# any patch length: for trainers that registered no profile
UNALIGNED_GRID = TokenGrid(stride=(1, 1, 1), min_tokens=16)


def register_method_profile(profile: MethodProfile) -> None:
    METHOD_PROFILES[profile.trainer] = profile


def get_method_profile(trainer: str) -> Optional[MethodProfile]:
    return METHOD_PROFILES.get(trainer)


def profile_of_trainer_class(cls: type) -> Optional[MethodProfile]:
    """The profile of a trainer class, or of its nearest base class with one whose network it keeps (the same
    network class or a subclass: SAM2_3dMedTrainer_noAux, a prompted variant of a network): a variant trainer
    inherits its method's token grid."""
    import pydoc

    network = pydoc.locate(cls.network_class) if getattr(cls, "network_class", "") else None
    for base in cls.__mro__:
        profile = METHOD_PROFILES.get(base.__name__)
        if profile is None:
            continue
        if base is cls:
            return profile
        base_network = pydoc.locate(base.network_class) if getattr(base, "network_class", "") else None
        if isinstance(network, type) and isinstance(base_network, type) and issubclass(network, base_network):
            return profile
        return None
    return None


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


# ---- ZAP25DSAMTrainer (ZAP-2.5DSAM) --------------------------------------------------------------------------------
def _zap25d_grid(kwargs: Dict) -> TokenGrid:
    # every axis is the slice axis of one orientation: it is cut into pseudo-slices of `pool` slices (padded to a
    # multiple: a length of 4k+1 pays a whole encoder pass for one slice) and, in the other two orientations, lies
    # in-plane, where a token is pool voxels too (SAM ViT: x4 upsampling, 16-pixel patches; LiteMedSAM: one voxel).
    # Not imposed: the windows of the frozen encoder (SAM ViT: 16 tokens = 64 voxels; TinyViT: 7 / 14 tokens), which
    # pad the in-plane token grid in the windowed blocks' attention only; forcing 64-voxel lengths would pad small
    # images far more. The memory trace runs that padding like any other operation.
    pool = int(kwargs.get("pool", 4))
    return TokenGrid(stride=(pool,) * 3, min_tokens=4)


register_method_profile(MethodProfile(
    "ZAP25DSAMTrainer", _zap25d_grid, label_kwargs=lambda has_regions: {"background_channel": not has_regions}))


# ---- SAM2_3dMedTrainer (SAM2-3dMed) --------------------------------------------------------------------------------
def _sam2_3dmed_grid(kwargs: Dict) -> TokenGrid:
    # slices along D are SAM 2's frames, any number of them (propagated one by one); at least 8, so that a pass
    # fills SAM 2's memory bank (the conditioning frame and 6 previous ones). In-plane a slice is upsampled (x4)
    # and zero-padded to a square frame whose side is a multiple of Hiera's stride 32: waste-free slices are square
    # with a side that is a multiple of 32 / upsample voxels (8). Not imposed: Hiera's windows at strides 16 and 32
    # (14 and 7 tokens: 224 pixels), which pad only those stages' windowed attention.
    from sam_nnunet.blocks.frames import HIERA_STRIDE

    side = max(1, round(HIERA_STRIDE / float(kwargs.get("upsample", 4))))
    return TokenGrid(stride=(1, side, side), min_tokens=(8, 4, 4), square=(1, 2))


register_method_profile(MethodProfile(
    "SAM2_3dMedTrainer", _sam2_3dmed_grid, label_kwargs=lambda has_regions: {"regions": bool(has_regions)}))
