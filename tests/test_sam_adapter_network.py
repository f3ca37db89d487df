"""SAMAdapterNetwork (3DSAM-adapter): parameter counts, shapes, what is frozen, pretrained loading, compile."""
import pytest
import torch
from torch import nn

from sam_nnunet.encoders.checkpoint import read_state_dict
from sam_nnunet.info import parameter_counts
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.networks.sam_adapter import SAMAdapterNetwork


def test_vit_b_counts_match_the_published_model():
    counts = parameter_counts("SAMAdapterTrainer", "vit_b", inputs=1, outputs=2)
    # 3DSAM-adapter without its prompt encoder: encoder 15,209,984 + decoder 7,088,256
    assert counts["trainable"] == 22_298_240
    # frozen: SAM ViT-B image encoder without its 2D neck and without the (trained) block LayerNorms
    assert counts["frozen"] == 88_846_592
    assert counts["added"] == 22_298_240 - 12 * 2 * 2 * 768  # everything trained but the LayerNorms is new


def test_counts_scale_with_channels_and_classes():
    base = parameter_counts("SAMAdapterTrainer", "vit_b", 1, 2)
    three = parameter_counts("SAMAdapterTrainer", "vit_b", 3, 4)
    five = parameter_counts("SAMAdapterTrainer", "vit_b", 5, 2)
    # 3 channels pass through (no projection); the decoder sees the image (+2 channels) and has 2 more classes
    assert three["trainable"] - base["trainable"] == 2 * 128 * 27 + 2 * 128 * 27
    # 5 channels: a 1x1x1 projection to 3 (5*3 + 3) and 4 more image channels in the decoder
    assert five["trainable"] - base["trainable"] == (5 * 3 + 3) + 4 * 128 * 27
    assert five["added"] - base["added"] == five["trainable"] - base["trainable"]


@pytest.mark.parametrize("channels,classes,shape", [(1, 2, (13, 18, 9)), (2, 3, (20, 28, 20)),
                                                    (3, 4, (7, 5, 11)), (4, 1, (16, 16, 16))])
def test_any_patch_size_and_channel_count(channels, classes, shape):
    torch.manual_seed(0)
    net = SAMAdapterNetwork(channels, classes, "vit_test")
    x = torch.randn(2, channels, *shape)
    y = net(x)
    assert y.shape == (2, classes, *shape)
    y.square().mean().backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


def test_frozen_and_trainable_parts():
    net = SAMAdapterNetwork(1, 2, "vit_test")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert all(n.startswith(("channels", "token_embed", "depth_embed", "adapters", "rel_pos_d", "necks", "decoder"))
               or ".norm1." in n or ".norm2." in n for n in trainable)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert "vit.patch_embed.proj.weight" in frozen and "vit.pos_embed" in frozen
    assert "vit.blocks.0.attn.rel_pos_h" in frozen and "vit.blocks.0.mlp.lin1.weight" in frozen
    assert not any(n.startswith("vit.neck") for n, _ in net.named_parameters())


def test_deep_supervision_is_refused_by_every_single_head_network():
    from sam_nnunet.networks.sam2_3dmed import SAM2_3dMedNetwork
    from sam_nnunet.networks.sam3dmed import SAM3DMedNetwork
    from sam_nnunet.networks.sam_adapter_prompted import SAMAdapterPromptedNetwork
    from sam_nnunet.networks.zap25d import ZAP25DNetwork
    from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork

    for cls, encoder in ((SAMAdapterNetwork, "vit_test"), (SAMAdapterPromptedNetwork, "vit_test"),
                         (ZAP25DNetwork, "vit_test"), (ZAP25DPromptedNetwork, "vit_test"),
                         (SAM2_3dMedNetwork, "sam2_test")):
        assert not cls.supports_deep_supervision
        with pytest.raises(ValueError, match=f"{cls.__name__} has no multi-scale heads"):
            cls(1, 2, encoder, deep_supervision=True)
    # the one multi-scale network takes the flag through the same base
    assert SAM3DMedNetwork.supports_deep_supervision
    assert SAM3DMedNetwork(1, 2, "vit_test", deep_supervision=True).decoder.deep_supervision


def test_pretrained_weights_and_provenance(tiny_sam_checkpoint):
    path, state = tiny_sam_checkpoint
    net = SAMAdapterNetwork(1, 2, "vit_test")
    net.load_pretrained(read_state_dict(path), path)
    for k, v in net.vit.state_dict().items():
        torch.testing.assert_close(v, state["image_encoder." + k], rtol=0, atol=0)
    for table, block in zip(net.rel_pos_d, net.vit.blocks):
        torch.testing.assert_close(table.detach(), 0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w).detach())
    net.record_pretrained(path, "ab" * 32)
    saved = net.state_dict()
    assert saved["_extra_state"]["sha256"] == "ab" * 32
    fresh = SAMAdapterNetwork(1, 2, "vit_test")
    fresh.load_state_dict(saved)  # strict, as nnU-Net's predictor does
    assert fresh.pretrained_info == {"encoder": "vit_test", "checkpoint": path, "sha256": "ab" * 32}


def test_torch_compile_captures_one_graph():
    torch.manual_seed(0)
    net = SAMAdapterNetwork(2, 3, "vit_test")
    x = torch.randn(2, 2, 13, 18, 9)
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break fails
    out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert net.adapters[0].down.weight.grad is not None


class _WithFrozenBatchNorm(SAMNetworkBase):
    def __init__(self):
        super().__init__("vit_test")
        self.backbone = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Dropout(0.5))
        self.backbone.requires_grad_(False)
        self.tuned = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))  # pretrained but fine-tuned
        self.head = nn.Sequential(nn.Conv3d(2, 2, 1), nn.BatchNorm3d(2))

    def pretrained_modules(self):
        return {"backbone": self.backbone, "tuned": self.tuned}


def test_frozen_normalisation_statistics_do_not_drift():
    net = _WithFrozenBatchNorm().train()
    assert not net.backbone[1].training and not net.backbone[2].training
    assert net.head[1].training  # trainable parts train normally
    assert net.tuned[1].training  # dropout of a fine-tuned pretrained block stays active
    before = net.backbone[1].running_mean.clone()
    net.backbone(torch.randn(4, 1, 3, 3, 3) * 5 + 3)
    torch.testing.assert_close(net.backbone[1].running_mean, before, rtol=0, atol=0)
