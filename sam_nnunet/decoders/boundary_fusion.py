"""BD-fusion of SAM2-3dMed: boundary logits refine the segmentation logits."""
import torch
from torch import nn


class BoundaryFusion3d(nn.Module):
    """``seg + g([seg, boundary])`` per object (class or region), ``g`` shared by all objects.

    ``g`` is a 3x3x3 convolution over the two logit maps, GELU, and a 1x1x1 convolution initialised to zero, so the
    fused logits start as the mask decoder's and the boundary branch enters only as far as training finds it useful.
    The 3D kernel also lets each voxel see the neighbouring slices' boundary evidence.

    Arguments:
      hidden: channels of the hidden layer.
    """

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(2, hidden, kernel_size=3, padding=1), nn.GELU(),
                                 nn.Conv3d(hidden, 1, kernel_size=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, segmentation: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """(B, K, D, H, W) segmentation and boundary logits -> (B, K, D, H, W) fused segmentation logits."""
        x = torch.stack([segmentation, boundary], dim=2).flatten(0, 1)  # (B*K, 2, D, H, W)
        return segmentation + self.net(x).view_as(segmentation)
