"""Clicks placed in one structure change the prediction there (3DSAM-adapter trained briefly; ZAP-2.5DSAM with real
LiteMedSAM weights, below).

Every volume holds two identical bright spheres in noise; the label is the sphere that was clicked. Without the
clicks the two cannot be told apart, so a network that scores well must read where the clicks are. The tiny
prompted network (vit_test) is trained briefly — its visual sampler and decoder, on encoder features computed once
(the encoder is not what is tested, and this keeps the test within seconds) — with 1 to 3 clicks per volume drawn by
the training sampler. On held-out volumes, clicks in sphere A must make the foreground probability high in A and low
in B, and clicks in B the reverse.
"""
import torch
import torch.nn.functional as F

from sam_nnunet.networks.sam_adapter_prompted import SAMAdapterPromptedNetwork
from sam_nnunet.prompts.clicks import normalise_coords, sample_clicks_from_target

SIZE, RADIUS, MIN_DISTANCE = 24, 4.0, 12.0


def two_spheres(n, generator):
    axes = [torch.arange(SIZE, dtype=torch.float32)] * 3
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    images, spheres = [], []
    for _ in range(n):
        while True:
            centres = torch.randint(int(RADIUS), SIZE - int(RADIUS), (2, 3), generator=generator).float()
            if (centres[0] - centres[1]).norm() >= MIN_DISTANCE:
                break
        masks = torch.stack([((grid - c) ** 2).sum(-1) <= RADIUS ** 2 for c in centres])
        images.append(0.3 * torch.randn(1, SIZE, SIZE, SIZE, generator=generator) + masks.any(0).float())
        spheres.append(masks)
    return torch.stack(images), torch.stack(spheres)  # (n, 1, S, S, S), (n, 2, S, S, S)


def test_clicks_in_one_of_two_identical_structures_select_it():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = SAMAdapterPromptedNetwork(1, 2, "vit_test")
    train_images, train_spheres = two_spheres(24, g)
    test_images, test_spheres = two_spheres(4, g)
    with torch.no_grad():
        train_features, test_features = net.encode(train_images), net.encode(test_images)

    def predict(features, images, coords, labels):
        features = list(features)
        features[-1] = net.prompt_encoder(features[-1], normalise_coords(coords, (SIZE,) * 3), labels)
        return net.decoder(features, images, images.shape[2:])

    optimizer = torch.optim.AdamW(list(net.prompt_encoder.parameters()) + list(net.decoder.parameters()), lr=3e-3)
    for _ in range(60):
        index = torch.randint(0, len(train_images), (8,), generator=g)
        which = torch.randint(0, 2, (8,), generator=g)
        target = train_spheres[index, which][:, None].to(torch.int16)
        coords, labels = sample_clicks_from_target(target, 2, False, positives_per_class=3, random_clicks=0,
                                                   min_positives_per_class=1, generator=g)
        logits = predict([f[index] for f in train_features], train_images[index], coords, labels)
        probability, truth = logits.softmax(1)[:, 1], target[:, 0].float()
        dice = (2 * (probability * truth).sum() + 1) / (probability.sum() + truth.sum() + 1)
        loss = F.cross_entropy(logits, target[:, 0].long()) + 1 - dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    own, other = [], []
    with torch.no_grad():
        for k in (0, 1):  # 3 clicks in sphere k of every held-out volume
            coords, labels = sample_clicks_from_target(test_spheres[:, k:k + 1].to(torch.int16), 2, False,
                                                       positives_per_class=3, random_clicks=0,
                                                       generator=torch.Generator().manual_seed(k))
            probability = predict(test_features, test_images, coords, labels).softmax(1)[:, 1]
            for i in range(len(test_images)):
                own.append(probability[i][test_spheres[i, k]].mean().item())
                other.append(probability[i][test_spheres[i, 1 - k]].mean().item())
    assert sum(o > t + 0.1 for o, t in zip(own, other)) >= 7, (own, other)
    assert sum(own) / 8 > 0.2 and sum(other) / 8 < 0.05, (own, other)


def test_zap_clicks_raise_the_logits_of_the_clicked_structure_with_real_litemedsam_weights():
    """ZAP-2.5DSAM rests on SAM's pretrained prompt path (frozen prompt encoder, pretrained decoder): with the real
    LiteMedSAM weights and no training, clicks in one of two identical spheres must raise the logits there far more
    than in the other sphere. The spheres sit so that the other sphere lies where a click would land on two of the
    three planes if rows and columns were swapped; the effect must also hold when clicking the other sphere."""
    from sam_nnunet.encoders.checkpoint import read_state_dict
    from sam_nnunet.encoders.litemedsam import packaged_checkpoint
    from sam_nnunet.networks.zap25d_prompted import ZAP25DPromptedNetwork
    from sam_nnunet.prompts.clicks import click_label

    size, radius = 16, 3.0
    path = packaged_checkpoint()
    net = ZAP25DPromptedNetwork(1, 2, "litemedsam")
    net.load_pretrained(read_state_dict(path), path)
    net.eval()
    axes = [torch.arange(size, dtype=torch.float32)] * 3
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    centres = torch.tensor([[4.0, 4.0, 11.0], [11.0, 11.0, 4.0]])  # (d, h, w)
    spheres = torch.stack([((grid - c) ** 2).sum(-1) <= radius ** 2 for c in centres])
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(1, 1, size, size, size, generator=g) + 2 * spheres.any(0).float() - 1
    owns = []
    with torch.no_grad():
        planes, spatial = net.embed(x)  # the frozen encoder once; the decoder per click set
        automatic = net.decode(planes, spatial)[0, 1]
        for k in (0, 1):
            for n in (1, 3):
                voxels = torch.nonzero(spheres[k])
                clicks = voxels[torch.randperm(len(voxels), generator=g)[:n]].float()[None]
                change = net.decode(planes, spatial, net.plane_prompts(
                    clicks, torch.full((1, n), click_label(1)), x.shape[2:]))[0, 1] - automatic
                own, other = change[spheres[k]].mean().item(), change[spheres[1 - k]].mean().item()
                assert own > 2 and own > other + 6, (k, n, own, other)
                owns.append(own)
    assert sum(owns) / len(owns) > 10, owns  # mean logit change in the clicked sphere
