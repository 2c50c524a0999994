"""FID Inception-V3 port: the pt_inception file's layout loads strictly, FID's block changes, clean-fid resizing.

The layout is written from torchvision's ``Inception3`` source (num_classes=1008, aux_logits=False,
as pytorch-fid builds it), not read from synfer's module.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synfer.errors import ConfigError, ModelLoadError
from synfer.models.inception import FIDInceptionV3, InceptionA, InceptionE, clean_pixels, clean_resize

# (name, out, in, kh, kw) of each BasicConv2d, per block type, from torchvision/models/inception.py
STEM = [
    ("Conv2d_1a_3x3", 32, 3, 3, 3),
    ("Conv2d_2a_3x3", 32, 32, 3, 3),
    ("Conv2d_2b_3x3", 64, 32, 3, 3),
    ("Conv2d_3b_1x1", 80, 64, 1, 1),
    ("Conv2d_4a_3x3", 192, 80, 3, 3),
]


def block_a(cin, pool):
    return [("branch1x1", 64, cin, 1, 1), ("branch5x5_1", 48, cin, 1, 1), ("branch5x5_2", 64, 48, 5, 5),
            ("branch3x3dbl_1", 64, cin, 1, 1), ("branch3x3dbl_2", 96, 64, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", pool, cin, 1, 1)]  # fmt: skip


def block_b(cin):
    return [("branch3x3", 384, cin, 3, 3), ("branch3x3dbl_1", 64, cin, 1, 1), ("branch3x3dbl_2", 96, 64, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3)]  # fmt: skip


def block_c(cin, c7):
    return [("branch1x1", 192, cin, 1, 1), ("branch7x7_1", c7, cin, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", 192, c7, 7, 1), ("branch7x7dbl_1", c7, cin, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", 192, c7, 1, 7),
            ("branch_pool", 192, cin, 1, 1)]  # fmt: skip


def block_d(cin):
    return [("branch3x3_1", 192, cin, 1, 1), ("branch3x3_2", 320, 192, 3, 3), ("branch7x7x3_1", 192, cin, 1, 1),
            ("branch7x7x3_2", 192, 192, 1, 7), ("branch7x7x3_3", 192, 192, 7, 1),
            ("branch7x7x3_4", 192, 192, 3, 3)]  # fmt: skip


def block_e(cin):
    return [("branch1x1", 320, cin, 1, 1), ("branch3x3_1", 384, cin, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", 448, cin, 1, 1), ("branch3x3dbl_2", 384, 448, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", 192, cin, 1, 1)]  # fmt: skip


BLOCKS = {
    "Mixed_5b": block_a(192, 32), "Mixed_5c": block_a(256, 64), "Mixed_5d": block_a(288, 64),
    "Mixed_6a": block_b(288), "Mixed_6b": block_c(768, 128), "Mixed_6c": block_c(768, 160),
    "Mixed_6d": block_c(768, 160), "Mixed_6e": block_c(768, 192), "Mixed_7a": block_d(768),
    "Mixed_7b": block_e(1280), "Mixed_7c": block_e(2048),
}  # fmt: skip


def fid_inception_layout(num_batches_tracked: bool = True) -> list[tuple[str, tuple]]:
    convs = [(name, o, i, kh, kw) for name, o, i, kh, kw in STEM]
    convs += [(f"{block}.{name}", o, i, kh, kw) for block, specs in BLOCKS.items() for name, o, i, kh, kw in specs]
    out = []
    for name, o, i, kh, kw in convs:
        out.append((f"{name}.conv.weight", (o, i, kh, kw)))
        out += [(f"{name}.bn.{p}", (o,)) for p in ("weight", "bias", "running_mean", "running_var")]
        if num_batches_tracked:
            out.append((f"{name}.bn.num_batches_tracked", ()))
    return out + [("fc.weight", (1008, 2048)), ("fc.bias", (1008,))]


def random_state_dict(layout, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(0)
        elif name.endswith("running_var"):
            sd[name] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            sd[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif name.endswith("bn.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[name] = 0.1 * torch.randn(shape, generator=g)
    return sd


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)).convert("RGBA"),
    ]


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory):
    sd = random_state_dict(fid_inception_layout(), seed=1)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)  # pytorch-fid's file is a bare state dict
    return path, sd


@pytest.fixture(scope="module")
def fid_model(fid_file):
    return FIDInceptionV3.from_checkpoint(fid_file[0])


def test_layout_has_94_convolutions():
    assert len(fid_inception_layout()) == 94 * 6 + 2


def test_published_layout_loads_strictly_and_gives_pool3_features(fid_file, fid_model):
    _, sd = fid_file
    model = fid_model
    assert not model.training
    assert torch.equal(model.Mixed_7c.branch3x3dbl_3b.conv.weight, sd["Mixed_7c.branch3x3dbl_3b.conv.weight"])
    with torch.no_grad():
        pixels = clean_pixels(pictures())
        features = model(pixels)
        logits = model.logits(pixels)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert features.min() >= 0  # averages of ReLU outputs
    assert not torch.allclose(features[0], features[1])
    assert logits.shape == (2, 1008)
    torch.testing.assert_close(logits, model.fc(features))


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    # Files saved before BatchNorm counted batches lack these entries; torch's strict load allows that.
    torch.save(random_state_dict(fid_inception_layout(num_batches_tracked=False), seed=2), tmp_path / "old.pth")
    FIDInceptionV3.from_checkpoint(tmp_path / "old.pth")


def test_mismatching_checkpoints_are_refused(fid_file, tmp_path):
    _, sd = fid_file
    renamed = OrderedDict(sd)
    renamed["Mixed_6b.branch7x7_9.conv.weight"] = renamed.pop("Mixed_6b.branch7x7_2.conv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(
        ModelLoadError, match=r"1 keys missing \(first: Mixed_6b\.branch7x7_2\.conv\.weight\); 1 unexpected"
    ):
        FIDInceptionV3.from_checkpoint(tmp_path / "renamed.pth")

    # torchvision's ImageNet Inception (1000 classes, auxiliary head) is a different network
    imagenet = OrderedDict(sd)
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    imagenet["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(imagenet, tmp_path / "imagenet.pth")
    with pytest.raises(ModelLoadError) as error:
        FIDInceptionV3.from_checkpoint(tmp_path / "imagenet.pth")
    assert "2 tensors have other shapes" in str(error.value) and "fc.weight [1000, 2048]" in str(error.value)

    with pytest.raises(ModelLoadError, match="does not exist"):
        FIDInceptionV3.from_checkpoint(tmp_path / "absent.pth")


def test_fid_pooling_changes():
    torch.manual_seed(0)
    block = InceptionA(8, pool_features=4).eval()
    with torch.no_grad():
        out = block(torch.ones(1, 8, 6, 6))
    pool_branch = out[:, -4:]
    # TensorFlow's average pool leaves padding out, so a constant input stays constant up to the border
    assert torch.allclose(pool_branch, pool_branch[:, :, 2:3, 2:3].expand_as(pool_branch), atol=1e-6)

    last = InceptionE(16, pool="max").eval()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        expected = last.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        assert torch.allclose(last(x)[:, -192:], expected)


def test_input_checks_and_scalings(fid_file, fid_model):
    path, _ = fid_file
    model = fid_model
    with pytest.raises(ConfigError, match="299x299"):
        model(torch.rand(1, 3, 256, 256))
    with pytest.raises(ConfigError, match="input scaling"):
        FIDInceptionV3(input_scaling="tf")
    clean = FIDInceptionV3.from_checkpoint(path, input_scaling="clean-fid")
    x = torch.rand(1, 3, 299, 299)
    same_input = ((x * 255 - 128) / 128 + 1) / 2  # what pytorch-fid's 2 x - 1 maps to clean-fid's (255 x - 128) / 128
    with torch.no_grad():
        torch.testing.assert_close(clean(x), model(same_input), rtol=1e-4, atol=1e-5)


def test_clean_resize_is_float_bicubic_per_channel():
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1)).astype(np.uint8)
    image = np.stack([ramp, np.zeros_like(ramp), np.full_like(ramp, 255)], axis=2)
    out = clean_resize(Image.fromarray(image))
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert np.all(out[:, :, 1] == 0) and np.all(out[:, :, 2] == 255)  # channels do not mix; constants stay
    assert not np.allclose(out[:, :, 0], np.round(out[:, :, 0]))  # never quantised back to uint8
    quantised = np.asarray(Image.fromarray(image).resize((299, 299), Image.BICUBIC), dtype=np.float32)
    assert np.abs(out - quantised).max() <= 1.0 + 1e-3  # the same filter, only the rounding differs
    np.testing.assert_array_equal(clean_resize(image), out)  # an RGB array gives the same
    assert clean_pixels([Image.fromarray(image)]).shape == (1, 3, 299, 299)
