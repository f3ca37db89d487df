"""Small networks for planner tests (importable by dotted path, as plans name networks)."""
import torch
from torch import nn


class FrozenStemNet(nn.Module):
    """A wide frozen stem (run without gradient, like a frozen encoder) and a trainable 1x1x1 head.

    Arguments:
      input_channels, num_classes: as nnU-Net passes them.
      width: stem channels.
      train_stem: make the stem trainable (the comparison case).
      deep_supervision: accepted and ignored (nnU-Net passes it).
    """

    def __init__(self, input_channels: int, num_classes: int, width: int = 32, train_stem: bool = False,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv3d(input_channels, width, 5, padding=2)
        self.head = nn.Conv3d(width, num_classes, 1)
        self.stem.requires_grad_(train_stem)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)))


class DictOutputNet(nn.Module):
    """A network whose forward returns a dict (auxiliary outputs), which nnU-Net's standard loss cannot take.

    Arguments: as FrozenStemNet; ``encoder`` is accepted (the planner passes the encoder it sizes).
    """

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "", deep_supervision: bool = False):
        super().__init__()
        self.head = nn.Conv3d(input_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.head(x), "aux": x.mean()}


class ValueReadingInitNet(FrozenStemNet):
    """FrozenStemNet whose constructor reads a tensor's value (as SAM 2's Hiera does with ``.item()`` on its
    drop-path schedule), which fake tensors cannot answer, and keeps a plain tensor attribute.

    Arguments: as FrozenStemNet.
    """

    def __init__(self, input_channels: int, num_classes: int, width: int = 32, train_stem: bool = False,
                 deep_supervision: bool = False) -> None:
        super().__init__(input_channels, num_classes, width, train_stem, deep_supervision)
        self.scale = torch.linspace(0, 2, 3)[1].item()  # 1.0
        self.offset = torch.zeros(1)  # not a buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale + self.offset
