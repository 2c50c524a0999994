"""The FID Inception-V3 in plain torch, and clean-fid's image resizing.

FID is defined by one network: TensorFlow's 2015-12-05 Inception graph, ported to torch as
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid; clean-fid's "legacy_pytorch" mode). It is
torchvision's ``Inception3`` with 1008 classes, no auxiliary head, ``transform_input=False`` and four
block changes that match the TensorFlow graph: the average pools of Mixed_5b-d (InceptionA),
Mixed_6b-e (InceptionC) and Mixed_7b (InceptionE) leave padding out of the average, and Mixed_7c
max-pools instead. Module names are torchvision's, so that file loads with ``strict=True``. The
features are the 2048-d global average pool (pool3).

``clean_resize`` reproduces clean-fid's resizing ("clean" mode): each channel resized on its own as a
float image with PIL bicubic, no quantisation. clean-fid's clean mode then runs NVIDIA's TorchScript
port of the same graph and scales inputs as (x - 128) / 128; ``input_scaling="clean-fid"`` does that
here, while the default is pytorch-fid's 2 x - 1 for inputs in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import ConfigError
from .torch_weights import load_strict, read_checkpoint, unwrap_state_dict

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_SIZE = 299
FID_FEATURES = 2048
FID_CLASSES = 1008
INPUT_SCALINGS = ("pytorch-fid", "clean-fid")


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _branch_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The 3x3 stride-1 pool before a ``branch_pool`` conv, as the TensorFlow graph has it."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_branch_pool(x, "avg"))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_branch_pool(x, "avg"))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` is FID's Mixed_7b, ``pool="max"`` its Mixed_7c."""

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(_branch_pool(x, self.pool))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionV3(nn.Module):
    """Pixels in [0, 1], [N, 3, 299, 299] -> pool3 features [N, 2048] (the FID network).

    ``resize_input=True`` first resizes other sizes bilinearly to 299, as pytorch-fid does by default;
    otherwise inputs must already be 299x299 (resize them with :func:`clean_resize`).
    """

    def __init__(self, input_scaling: str = "pytorch-fid", resize_input: bool = False):
        super().__init__()
        if input_scaling not in INPUT_SCALINGS:
            raise ConfigError(f"unknown input scaling {input_scaling!r} (accepted: {', '.join(INPUT_SCALINGS)})")
        self.input_scaling = input_scaling
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(FID_FEATURES, FID_CLASSES)  # unused for FID; kept so the published file loads strictly

    def _scale(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ConfigError(
                f"the FID Inception takes [N, 3, {FID_SIZE}, {FID_SIZE}] pixels; got {list(pixels.shape)}"
            )
        if self.resize_input and tuple(pixels.shape[-2:]) != (FID_SIZE, FID_SIZE):
            pixels = F.interpolate(pixels, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        elif tuple(pixels.shape[-2:]) != (FID_SIZE, FID_SIZE):
            raise ConfigError(
                f"the FID Inception takes {FID_SIZE}x{FID_SIZE} inputs; got {pixels.shape[-2]}x{pixels.shape[-1]} "
                "(resize with clean_resize, or build it with resize_input=True)"
            )
        if self.input_scaling == "clean-fid":
            return (pixels * 255.0 - 128.0) / 128.0
        return 2.0 * pixels - 1.0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self._scale(pixels)
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(self.avgpool(x), 1)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The 1008 class logits (what Inception Score reads)."""
        return self.fc(self(pixels))

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, input_scaling: str = "pytorch-fid"
    ) -> FIDInceptionV3:
        """The network with the weights of ``pt_inception-2015-12-05-6726825d.pth``, loaded strictly, in eval mode."""
        source = f"FID Inception checkpoint {str(path)!r}"
        state_dict = unwrap_state_dict(read_checkpoint(path, "FID Inception"), source)
        model = cls(input_scaling=input_scaling)
        load_strict(model, state_dict, source)
        return model.to(device).eval()


def clean_resize(image: Image.Image | np.ndarray, size: int = FID_SIZE) -> np.ndarray:
    """clean-fid's resize (``make_resizer("PIL", False, "bicubic", (299, 299))``): float32 [299, 299, 3] in [0, 255].

    The image is taken as RGB uint8 (clean-fid opens files with ``.convert("RGB")``); each channel is
    resized as a 32-bit float ("F") image with PIL bicubic filtering and clipped to [0, 255], never
    quantised back to uint8.
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ConfigError(f"clean_resize takes an RGB image [H, W, 3]; got an array of shape {array.shape}")
    channels = []
    for c in range(3):
        plane = Image.fromarray(np.ascontiguousarray(array[:, :, c], dtype=np.float32))  # mode "F"
        resized = plane.resize((size, size), resample=Image.BICUBIC)
        channels.append(np.asarray(resized, dtype=np.float32).clip(0, 255))
    return np.stack(channels, axis=2)


def clean_pixels(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """A batch for :class:`FIDInceptionV3`: ``clean_resize`` of each image, as [N, 3, 299, 299] in [0, 1]."""
    if len(images) == 0:
        raise ConfigError("no images given for FID features")
    batch = np.stack([clean_resize(image) for image in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous() / 255.0
