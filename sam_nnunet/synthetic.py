"""Synthetic volumes shaped like the MSD hippocampus task, for the demo, the Decathlon workflow and the tests when
no real data is at hand: two adjacent structures of different brightness in noise."""
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def write_image(array: np.ndarray, path: str, spacing: Sequence[float]) -> None:
    """``array`` (z, y, x) as a compressed image file with ``spacing`` (z, y, x)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(image, path, useCompression=True)


def synthetic_case(rng: np.random.Generator, shape=(36, 44, 36)):
    """One volume (z, y, x) with label 1 and label 2: two touching ellipsoids of different brightness in noise."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-4, 4, size=3)
    radii = np.array([6, 9, 5], dtype=np.float32) * rng.uniform(0.8, 1.2, size=3)
    inside = lambda c, r: ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    anterior = inside(centre - [0, radii[1] * 0.6, 0], radii * [1, 0.7, 1])
    posterior = inside(centre + [0, radii[1] * 0.6, 0], radii * [0.8, 0.7, 0.8]) & ~anterior
    label = np.zeros(shape, dtype=np.uint8)
    label[anterior] = 1
    label[posterior] = 2
    field = np.sin(zz / shape[0] * np.pi * rng.uniform(0.5, 1.5)) * 0.2  # smooth intensity inhomogeneity
    image = 0.3 + field + 0.25 * rng.standard_normal(shape).astype(np.float32)
    image[anterior] += 1.0
    image[posterior] += 0.6
    return (image * 100).astype(np.float32), label
