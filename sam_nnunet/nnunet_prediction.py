"""nnU-Net's predictor, for networks that predict a whole case themselves (``predict_volume``: ZAP-2.5DSAM).

``nnUNetPredictor.predict_sliding_window_return_logits`` cuts a case into overlapping 3D tiles and calls the network
on each. A 2.5D network with a frozen encoder then encodes every pseudo-slice once per tile that holds it (up to 8
times with nnU-Net's half-tile steps), although its pseudo-slices do not depend on each other along the slice axis.
``ZAP25DNetwork.predict_volume`` encodes each pseudo-slice of the case once instead.

``nnUNetv2_predict`` and nnU-Net's final validation build ``nnUNetPredictor`` themselves, so there is no class to
substitute: ``install`` wraps that one method, once. The wrapper hands the case to the network once per mirroring
(nnU-Net's test-time augmentation: the same flips, averaged) when the network has ``predict_volume`` and the
predictor keeps nnU-Net's tile loop; every other network, and a predictor subclass with its own tiles (the click
predictor, ``sam_nnunet.inference.predictor``), runs nnU-Net's code unchanged. Padding to the patch size, autocast on
CUDA, the results device and the crop back are nnU-Net's.

On the CPU nnU-Net predicts in float32. A network whose class declares ``cpu_bf16_prediction`` (ZAP-2.5DSAM: its
frozen encoder is most of a prediction's cost, and its Dice in bfloat16 is measured in zap25dsam.md) predicts under
CPU autocast in bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX), as nnU-Net predicts under fp16
autocast on CUDA (``inference_autocast``; ``nnUNet_SAM_cpu_bf16`` chooses).
"""
import itertools
from typing import Optional

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import dummy_context, empty_cache
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from sam_nnunet import settings


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX-512 BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def cpu_bf16_setting() -> str:
    """``nnUNet_SAM_cpu_bf16``: "auto" (unset), "1" or "0"."""
    return settings.get_choice(settings.CPU_BF16, ("auto", "1", "0"), "auto")


def unwrapped(network: nn.Module) -> nn.Module:
    """The network inside torch.compile's and DDP's wrappers."""
    while isinstance(network, (OptimizedModule, DistributedDataParallel)):
        network = network._orig_mod if isinstance(network, OptimizedModule) else network.module
    return network


def inference_autocast(device: torch.device, network: nn.Module):
    """The autocast ``network`` predicts under: nnU-Net's on CUDA (fp16); on the CPU bfloat16 for a network that
    declares ``cpu_bf16_prediction``, where ``nnUNet_SAM_cpu_bf16`` says so ("auto": where the CPU has it natively;
    elsewhere bf16 is emulated and slower than float32), else none (float32, as nnU-Net)."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=True)
    if device.type == "cpu" and getattr(unwrapped(network), "cpu_bf16_prediction", False):
        choice = cpu_bf16_setting()
        if choice == "1" or (choice == "auto" and cpu_bf16_native()):
            return torch.autocast("cpu", dtype=torch.bfloat16)
    return dummy_context()


def whole_case_network(predictor: nnUNetPredictor) -> Optional[nn.Module]:
    """The network that predicts ``predictor``'s cases whole, or None (nnU-Net's tiles)."""
    network = unwrapped(predictor.network)
    if not hasattr(network, "predict_volume"):
        return None
    cls = type(predictor)
    for name in ("_internal_predict_sliding_window_return_logits", "_internal_maybe_mirror_and_predict"):
        if getattr(cls, name) is not getattr(nnUNetPredictor, name):
            return None  # a predictor with its own tiles (clicks per tile) keeps them
    return network


def mirror_combinations(predictor: nnUNetPredictor):
    """nnU-Net's test-time mirrorings as tensor dims of (1, C, *S): () first, then every non-empty combination."""
    axes = predictor.allowed_mirroring_axes if predictor.use_mirroring else None
    if not axes:
        return [()]
    dims = [a + 2 for a in axes]
    return [()] + [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]


def _predict_sliding_window_return_logits(self: nnUNetPredictor, input_image: torch.Tensor) -> torch.Tensor:
    network = whole_case_network(self)
    if network is None:
        return _NNUNET_METHOD(self, input_image)
    with torch.inference_mode():
        self.network = self.network.to(self.device)
        self.network.eval()
        empty_cache(self.device)
        with inference_autocast(self.device, network):
            patch = self.configuration_manager.patch_size
            data, revert = pad_nd_image(input_image, patch, "constant", {"value": 0}, True, None)
            x = data[None].to(self.device)
            combinations = mirror_combinations(self)
            logits = None
            for dims in combinations:
                flipped = torch.flip(x, dims) if dims else x
                pred = network.predict_volume(flipped, patch, self.tile_step_size, self.use_gaussian)
                pred = (torch.flip(pred, dims) if dims else pred).float()
                logits = pred if logits is None else logits.add_(pred)
            logits = logits[0] / len(combinations)
        results = self.device if self.perform_everything_on_device else torch.device("cpu")
        logits = logits.to(results)[(slice(None), *revert[1:])]
        empty_cache(self.device)
    return logits


_NNUNET_METHOD = nnUNetPredictor.predict_sliding_window_return_logits


def install() -> None:
    """Wrap ``nnUNetPredictor.predict_sliding_window_return_logits`` (idempotent)."""
    if nnUNetPredictor.predict_sliding_window_return_logits is not _predict_sliding_window_return_logits:
        nnUNetPredictor.predict_sliding_window_return_logits = _predict_sliding_window_return_logits
