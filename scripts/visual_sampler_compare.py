"""3DSAM-adapter's visual sampler: the public code's computation (``public``) against ours (``click_aware``).

    .venv/bin/python scripts/visual_sampler_compare.py identical 150 0,1
    .venv/bin/python scripts/visual_sampler_compare.py distinct 150 0,1

Two spheres in noise, the label is the sphere that was clicked (1 to 3 clicks, the ZAP click sampler). ``identical``:
both spheres +1, only the click's position tells them apart; ``distinct``: +1 and -1, the features at the click
tell them apart. The tiny prompted network (``vit_test``, random weights) trains its visual sampler and decoder on
encoder features computed once (as tests/test_click_effect.py), batch 8, AdamW 3e-3, for the given iterations;
then 8 held-out volumes are predicted with clicks in each sphere. Printed per mode and seed: mean foreground
probability inside the clicked / the other sphere, the share of predictions where the clicked sphere's exceeds the
other's by 0.1, the Dice of the clicked sphere at 0.5. One thread; the times printed depend on the machine's load,
the figures do not.
"""
import sys
import time

import torch
import torch.nn.functional as F

from sam_nnunet.networks.sam_adapter_prompted import SAMAdapterPromptedNetwork
from sam_nnunet.prompts.clicks import normalise_coords, sample_clicks_from_target

SIZE, RADIUS, MIN_DISTANCE = 24, 4.0, 12.0


def spheres(n, generator, distinct):
    axes = [torch.arange(SIZE, dtype=torch.float32)] * 3
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    images, masks = [], []
    for _ in range(n):
        while True:
            centres = torch.randint(int(RADIUS), SIZE - int(RADIUS), (2, 3), generator=generator).float()
            if (centres[0] - centres[1]).norm() >= MIN_DISTANCE:
                break
        m = torch.stack([((grid - c) ** 2).sum(-1) <= RADIUS ** 2 for c in centres])
        signal = m[0].float() + (-1.0 if distinct else 1.0) * m[1].float()
        images.append(0.3 * torch.randn(1, SIZE, SIZE, SIZE, generator=generator) + signal)
        masks.append(m)
    return torch.stack(images), torch.stack(masks)  # (n, 1, S, S, S), (n, 2, S, S, S)


def run(mode, seed, distinct, iterations):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    net = SAMAdapterPromptedNetwork(1, 2, "vit_test", visual_sampler=mode)
    train_images, train_spheres = spheres(24, g, distinct)
    test_images, test_spheres = spheres(8, g, distinct)
    with torch.no_grad():
        train_features, test_features = net.encode(train_images), net.encode(test_images)

    def predict(features, images, coords, labels):
        features = list(features)
        features[-1] = net.prompt_encoder(features[-1], normalise_coords(coords, (SIZE,) * 3), labels)
        return net.decoder(features, images, images.shape[2:])

    optimizer = torch.optim.AdamW(list(net.prompt_encoder.parameters()) + list(net.decoder.parameters()), lr=3e-3)
    for _ in range(iterations):
        index = torch.randint(0, len(train_images), (8,), generator=g)
        which = torch.randint(0, 2, (8,), generator=g)
        target = train_spheres[index, which][:, None].to(torch.int16)
        coords, labels = sample_clicks_from_target(target, 2, False, positives_per_class=3, random_clicks=0,
                                                   min_positives_per_class=1, generator=g)
        logits = predict([f[index] for f in train_features], train_images[index], coords, labels)
        p, t = logits.softmax(1)[:, 1], target[:, 0].float()
        loss = F.cross_entropy(logits, target[:, 0].long()) + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    own, other, dice = [], [], []
    with torch.no_grad():
        for k in (0, 1):
            coords, labels = sample_clicks_from_target(test_spheres[:, k:k + 1].to(torch.int16), 2, False,
                                                       positives_per_class=3, random_clicks=0,
                                                       generator=torch.Generator().manual_seed(k))
            p = predict(test_features, test_images, coords, labels).softmax(1)[:, 1]
            for i in range(len(test_images)):
                own.append(p[i][test_spheres[i, k]].mean().item())
                other.append(p[i][test_spheres[i, 1 - k]].mean().item())
                predicted, truth = p[i] > 0.5, test_spheres[i, k]
                dice.append((2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1)).item())
    n = len(own)
    return sum(own) / n, sum(other) / n, sum(o > t + 0.1 for o, t in zip(own, other)) / n, sum(dice) / n


def main(argv):
    task, iterations, seeds = argv[0], int(argv[1]), [int(s) for s in argv[2].split(",")]
    torch.set_num_threads(1)
    for seed in seeds:
        for mode in ("public", "click_aware"):
            start = time.time()
            own, other, selected, dice = run(mode, seed, task == "distinct", iterations)
            print(f"{task} iterations={iterations} seed={seed} {mode:12s} p(clicked)={own:.3f} p(other)={other:.3f} "
                  f"selected={selected:.2f} dice={dice:.3f} ({time.time() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
