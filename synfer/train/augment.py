"""Training augmentation for face crops, run with kornia on the training device (batches in [0, 1])."""

from __future__ import annotations

from torch import nn


def face_augmentation(size: int) -> nn.Module:
    """Random resized crop, horizontal flip, small affine, colour jitter, blur and random erasing.

    Flipping keeps every expression's label (contempt's one-sided smile moves to the other side).
    Crops keep most of the face: expressions live in the mouth and eyes, which a tight crop loses.
    Blur: faces are often soft (focus, motion, low resolution upsampled), and a classifier that only
    saw sharp ones under-reads soft ones; the sigma is relative to the training size.
    """
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=(0.7, 1.0), ratio=(0.9, 1.1)),
        K.RandomHorizontalFlip(),
        K.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.95, 1.05), p=0.5),
        K.ColorJitter(0.3, 0.3, 0.3, 0.03, p=0.8),
        K.RandomGaussianBlur(_odd(size // 16 * 2 + 1), (0.1, max(size / 48, 0.5)), p=0.25),
        K.RandomErasing(scale=(0.02, 0.15), p=0.25),
    )


def _odd(k: int) -> tuple[int, int]:
    k = max(3, k | 1)
    return (k, k)
