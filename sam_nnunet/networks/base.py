"""What every SAM network of this package shares: frozen parts, pretrained-weight provenance, parameter report."""
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from sam_nnunet.blocks.channels import InputChannelAdapter
from sam_nnunet.encoders.contract import IntensityWindow
from sam_nnunet.encoders.registry import input_contract
from sam_nnunet.networks.token_grid import UNALIGNED_GRID, TokenGrid


class SAMNetworkBase(nn.Module):
    """Base of the networks our trainers build.

    A subclass
      - builds its modules in ``__init__`` with random weights (nnU-Net builds networks at inference too, where the
        trained weights come from nnU-Net's own checkpoint),
      - lists the submodules whose weights come from the foundation model in ``pretrained_modules()``,
      - freezes what the method freezes (``requires_grad=False``) in ``__init__``,
      - implements ``load_pretrained(state_dict, path)``, called by the trainer after nnU-Net built the network.

    The provenance of the pretrained weights (encoder name, checkpoint sha256) is part of the state dict
    (``_extra_state``), so it is saved in every nnU-Net checkpoint and travels with exported models.
    """

    #: logits at several decoder levels, as nnU-Net's deep supervision needs; the others have one full-resolution
    #: head and refuse the flag nnU-Net passes them
    supports_deep_supervision = False
    #: predicts under bfloat16 autocast on CPUs that compute it natively (``nnunet_prediction.inference_autocast``):
    #: declared by a method only where its Dice in bfloat16 was measured against float32
    cpu_bf16_prediction = False

    def __init__(self, encoder: str, deep_supervision: bool = False) -> None:
        super().__init__()
        if deep_supervision and not self.supports_deep_supervision:
            raise ValueError(f"{type(self).__name__} has no multi-scale heads; build it with deep_supervision=False")
        self.encoder_name = encoder
        self.pretrained_info: Dict[str, Optional[str]] = {"encoder": encoder, "checkpoint": None, "sha256": None}

    # ---- planning: what SAMPlanner asks of a network class -------------------------------------------------
    @classmethod
    def token_grid(cls, arch_kwargs: Dict) -> TokenGrid:
        """The patch lengths this network takes without padding, for the arguments the plans give it."""
        return UNALIGNED_GRID

    @classmethod
    def planned_deep_supervision_scales(cls, arch_kwargs: Dict) -> Optional[List[List[float]]]:
        """nnU-Net's deep-supervision scales (finest first) of a network built with ``arch_kwargs``; None without."""
        return None

    # ---- what the subclass provides -------------------------------------------------------------------------
    def pretrained_modules(self) -> Dict[str, nn.Module]:
        """{attribute name: module} of everything initialised from the foundation-model checkpoint."""
        raise NotImplementedError

    def load_pretrained(self, state_dict: Dict[str, torch.Tensor], path: str = "the checkpoint") -> None:
        """Copy the foundation model's weights into ``pretrained_modules()`` (strict; resizing where needed)."""
        raise NotImplementedError

    # ---- shared behaviour -------------------------------------------------------------------------------------
    def encoder_input(self, input_channels: int, input_window=None) -> InputChannelAdapter:
        """nnU-Net's input channels -> the encoder's 3 channels, with ``input_window`` (the plans' ``[[low, high],
        ...]`` per channel, ``encoders.contract``) in the value range the encoder was trained on; None: as they are."""
        window = IntensityWindow.from_kwargs(input_window)
        contract = input_contract(self.encoder_name) if window is not None else None
        return InputChannelAdapter(input_channels, 3, window, contract)

    def record_pretrained(self, checkpoint: Optional[str], sha256: Optional[str]) -> None:
        self.pretrained_info = {"encoder": self.encoder_name, "checkpoint": checkpoint, "sha256": sha256}

    def get_extra_state(self):
        return dict(self.pretrained_info)

    def set_extra_state(self, state) -> None:
        if isinstance(state, dict):
            self.pretrained_info = dict(state)

    def pretrained_parameter_names(self) -> set:
        names = set()
        for prefix, module in self.pretrained_modules().items():
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
        return names

    def parameter_report(self) -> Dict[str, int]:
        """Counts of trainable, frozen, added (not from the checkpoint) and total parameters."""
        pretrained = self.pretrained_parameter_names()
        trainable = frozen = added = 0
        for name, p in self.named_parameters():
            n = p.numel()
            if p.requires_grad:
                trainable += n
            else:
                frozen += n
            if name not in pretrained:
                added += n
        return {"trainable": trainable, "frozen": frozen, "added": added, "total": trainable + frozen}

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        # nnU-Net calls network.train() every epoch; statistics and dropout of frozen pretrained parts must not
        # change with it. Inside a pretrained module, a BatchNorm with no trainable weight stays in eval, and so does
        # a Dropout whose enclosing block has no trainable weight (dropout in a fine-tuned block keeps working).
        super().train(mode)
        if mode:
            for prefix, part in self.pretrained_modules().items():
                named = dict(part.named_modules())
                for name, module in named.items():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        frozen = not any(p.requires_grad for p in module.parameters())
                    elif isinstance(module, nn.Dropout):
                        parent = named[name.rsplit(".", 1)[0] if "." in name else ""]
                        frozen = not any(p.requires_grad for p in parent.parameters())
                    else:
                        continue
                    if frozen:
                        module.eval()
        return self
