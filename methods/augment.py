"""RandAugment on a whole uint8 batch on the GPU, with exactly the per-image draws of torchvision's.

torchvision's ``v2.RandAugment`` called on one image draws, for each of its ``num_ops`` slots, an operation
(``torch.randint``) and, for signed operations, a sign (``torch.rand``), then applies that operation to the image.
Called image by image over a batch of 64 that is 128 small calls per batch, each a few GPU kernels.

:class:`BatchedRandAugment` makes the same draws, in the same order, from the same generator (so the random stream
and every image's operations are identical to the per-image loop), then applies each slot's operations once per
distinct (operation, magnitude) to the sub-batch of images that drew it. Every RandAugment operation works image by
image (affine warps with one matrix, colour ops, per-image histograms for equalize and autocontrast), so the result
equals the per-image loop's exactly; tests/test_throughput_exactness.py checks it against ``v2.RandAugment``.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from bench.train.batches import to_device


class BatchedRandAugment:
    """``v2.RandAugment(num_ops, magnitude)`` applied to every image of ``[B, 3, H, W]`` uint8, batched."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        from torchvision.transforms import v2

        self.reference = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins)
        space = getattr(self.reference, "_AUGMENTATION_SPACE", None)
        self.batched = space is not None and hasattr(self.reference, "_apply_image_or_video_transform")
        self.keys = tuple(space) if space is not None else ()

    def draw(self, height: int, width: int) -> list[tuple[str, float]]:
        """One image's operations: ``num_ops`` (name, signed magnitude), drawn as ``v2.RandAugment`` draws them."""
        ref, ops = self.reference, []
        for _ in range(ref.num_ops):
            key = self.keys[int(torch.randint(len(self.keys), ()))]
            magnitudes_fn, signed = ref._AUGMENTATION_SPACE[key]
            magnitudes = magnitudes_fn(ref.num_magnitude_bins, height, width)
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[ref.magnitude])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            ops.append((key, magnitude))
        return ops

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.batched:  # a torchvision without the private helpers: the per-image loop
            return torch.stack([self.reference(img) for img in images])
        height, width = images.shape[-2:]
        plan = [self.draw(height, width) for _ in range(images.shape[0])]  # image by image, like the loop
        out = images.clone()
        for slot in range(self.reference.num_ops):
            groups: dict[tuple[str, float], list[int]] = defaultdict(list)
            for i, ops in enumerate(plan):
                groups[ops[slot]].append(i)
            for (key, magnitude), rows in groups.items():
                if key == "Identity":
                    continue
                idx = to_device(torch.tensor(rows), images.device)  # pinned, non-blocking: no wait on the GPU
                out[idx] = self.reference._apply_image_or_video_transform(
                    out[idx], key, magnitude, interpolation=self.reference.interpolation, fill=self.reference._fill
                )
        return out


class BatchedCutout:
    """The DualCoOp/IntCLIP code's ``CutoutPIL(cutout_factor)`` on a uint8 batch ``[B, 3, H, W]`` on its device: per
    image a rectangle of about ``factor`` x the side, centred at a uniformly drawn pixel and clipped to the image,
    filled with one uniformly drawn colour (PIL's rectangle includes both corners). Draws come from torch's global
    generator (seeded by the engine), the centres first, then the colours."""

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        half_h, half_w = int(self.factor * h + 0.5) // 2, int(self.factor * w + 0.5) // 2
        centre_y, centre_x = torch.randint(h, (b,)), torch.randint(w, (b,))
        colour = torch.randint(256, (b, 3), dtype=torch.uint8)
        y1, y2 = (centre_y - half_h).clamp(0, h), (centre_y + half_h).clamp(0, h)
        x1, x2 = (centre_x - half_w).clamp(0, w), (centre_x + half_w).clamp(0, w)
        rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        inside = (rows >= y1[:, None, None]) & (rows <= y2[:, None, None]) & (cols >= x1[:, None, None]) & (cols <= x2[:, None, None])
        inside, colour = to_device(inside, images.device), to_device(colour, images.device)
        return torch.where(inside[:, None], colour[:, :, None, None], images)


class TrainAugment:
    """Cutout then RandAugment, per image, on a uint8 batch ``[B, 3, H, W]`` (the DualCoOp and released IntCLIP
    training transform after the resize; RandAugment is torchvision's, see README for the difference)."""

    def __init__(self, cutout_factor: float = 0.5, num_ops: int = 2, magnitude: int = 9) -> None:
        self.cutout = BatchedCutout(cutout_factor)
        self.randaugment = BatchedRandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.randaugment(self.cutout(images))
