"""OpenGraphAU port and torchvision-layout ResNet: published checkpoint layout, strict loading, forward, preprocessing.

Key names and shapes here are written from the original sources (torchvision's ResNet naming,
OpenGraphAU's ``model/ANFL.py``, ``model/MEFL.py``, ``model/graph_edge_model.py``,
``model/basic_block.py``), not read from synfer's modules, so a renamed module breaks these tests.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synfer.aus import AU_NAMES
from synfer.errors import ConfigError, ModelLoadError
from synfer.models.opengraphau import (
    OPENGRAPHAU_AUS,
    OPENGRAPHAU_SLOTS,
    OPENGRAPHAU_TO_SYNFER,
    Head,
    OpenGraphAU,
    preprocess,
    to_synfer_slots,
)
from synfer.models.tv_resnet import resnet18, resnet50

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# --- layouts written from the original sources ----------------------------------------------------------
def bn(name: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.{p}", (channels,)) for p in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{name}.num_batches_tracked", ())
    ]


def torchvision_resnet_layout(layers: list[int], bottleneck: bool, fc: bool = True) -> list[tuple[str, tuple]]:
    """torchvision ResNet state-dict entries: conv1/bn1, layerN.i.convK/bnK, downsample.0/1, fc."""
    expansion = 4 if bottleneck else 1
    out = [("conv1.weight", (64, 3, 7, 7))] + bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for k, (o, c, s) in enumerate(convs, start=1):
                out += [(f"{p}.conv{k}.weight", (o, c, s, s))] + bn(f"{p}.bn{k}", o)
            stride = 2 if (stage > 1 and i == 0) else 1
            if i == 0 and (stride != 1 or inplanes != planes * expansion):
                out += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1))]
                out += bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    if fc:
        out += [("fc.weight", (1000, 512 * expansion)), ("fc.bias", (1000,))]
    return out


def linear_block(name: str, cin: int, cout: int) -> list[tuple[str, tuple]]:
    return [(f"{name}.fc.weight", (cout, cin)), (f"{name}.fc.bias", (cout,))] + bn(f"{name}.bn", cout)


BACKBONES = {"resnet50": ([3, 4, 6, 3], True), "resnet18": ([2, 2, 2, 2], False)}


def opengraphau_layout(stage: int, backbone: str = "resnet50") -> list[tuple[str, tuple]]:
    """MEFARG (backbone.fc = None), 27 main + 14 sub AUs, as train_stage{1,2}.py save it."""
    layers, bottleneck = BACKBONES[backbone]
    width = 2048 if bottleneck else 512
    c, n = width // 4, 27
    out = [(f"backbone.{k}", s) for k, s in torchvision_resnet_layout(layers, bottleneck, fc=False)]
    out += linear_block("global_linear", width, c)
    for i in range(n):
        out += linear_block(f"head.main_class_linears.{i}", c, c)
    if stage == 1:
        out += [("head.gnn.U.weight", (c, c)), ("head.gnn.U.bias", (c,))]
        out += [("head.gnn.V.weight", (c, c)), ("head.gnn.V.bias", (c,))] + bn("head.gnn.bnv", n)
    else:
        for attn in ("FAM", "ARM"):
            p = f"head.edge_extractor.{attn}"
            out += [(f"{p}.linear_q.weight", (c // 2, c)), (f"{p}.linear_q.bias", (c // 2,))]
            out += [(f"{p}.linear_k.weight", (c // 2, c)), (f"{p}.linear_k.bias", (c // 2,))]
            out += [(f"{p}.linear_v.weight", (c, c)), (f"{p}.linear_v.bias", (c,))]
        out += [("head.edge_extractor.edge_proj.weight", (c, c)), ("head.edge_extractor.edge_proj.bias", (c,))]
        out += bn("head.edge_extractor.bn", n * n)
        for layer in range(2):
            p = f"head.gnn.graph_layers.{layer}"
            out += [(f"{p}.{m}.weight", (c, c)) for m in "UVABE"] + bn(f"{p}.bnv", n) + bn(f"{p}.bne", n * n)
    out += [("head.main_sc", (n, c)), ("head.sub_sc", (14, c))]
    return out


def random_state_dict(layout, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            sd[name] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:  # weights scaled by fan-in so that activations stay finite
            sd[name] = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
        elif name.endswith(".weight"):  # every 1-d weight here is a BatchNorm scale
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[name] = 0.1 * torch.randn(shape, generator=g)
    return sd


def save_published(path, state_dict) -> None:
    """As train_stage1.py saves it: {'epoch', 'state_dict' of an nn.DataParallel, 'optimizer'}."""
    wrapped = OrderedDict((f"module.{k}", v) for k, v in state_dict.items())
    optimizer = {
        "state": {},
        "param_groups": [{"lr": 2e-5, "betas": (0.9, 0.999), "weight_decay": 5e-4, "params": [0, 1]}],
    }
    torch.save({"epoch": 11, "state_dict": wrapped, "optimizer": optimizer}, path)


def face_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8)),  # greyscale, landscape
    ]


# --- torchvision ResNet ------------------------------------------------------------------------------
def test_layout_counts_match_torchvision():
    assert len(torchvision_resnet_layout([3, 4, 6, 3], True)) == 320
    assert len(torchvision_resnet_layout([2, 2, 2, 2], False)) == 122


@pytest.mark.parametrize(
    ("factory", "layers", "bottleneck"), [(resnet50, [3, 4, 6, 3], True), (resnet18, [2, 2, 2, 2], False)]
)
def test_torchvision_state_dict_loads_strictly(factory, layers, bottleneck):
    sd = random_state_dict(torchvision_resnet_layout(layers, bottleneck), seed=1)
    model = factory()
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    with torch.no_grad():
        logits = model.eval()(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


# --- OpenGraphAU checkpoints -----------------------------------------------------------------------------
def test_stage1_published_checkpoint_loads_and_predicts(tmp_path):
    layout = opengraphau_layout(1)
    assert len(layout) == 525
    sd = random_state_dict(layout, seed=2)
    save_published(tmp_path / "OpenGprahAU-ResNet50_first_stage.pth", sd)
    model = OpenGraphAU.from_checkpoint(tmp_path / "OpenGprahAU-ResNet50_first_stage.pth")
    assert model.stage == 1 and not model.training
    assert torch.equal(model.head.sub_sc, sd["head.sub_sc"])
    assert torch.equal(
        model.backbone.layer1[0].downsample[1].running_var, sd["backbone.layer1.0.downsample.1.running_var"]
    )
    probs = model.predict(face_images())
    assert probs.shape == (2, 41)
    assert torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert not torch.allclose(probs[0], probs[1])  # the two images are told apart


def test_stage2_checkpoint_is_recognised_and_runs(tmp_path):
    layout = opengraphau_layout(2)
    assert len(layout) == 565
    save_published(tmp_path / "second.pth", random_state_dict(layout, seed=3))
    model = OpenGraphAU.from_checkpoint(tmp_path / "second.pth")
    assert model.stage == 2
    with torch.no_grad():
        probs = model(torch.randn(2, 3, 64, 64))  # 2x2 feature map keeps the 729 edge maps small
    assert probs.shape == (2, 41) and torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    with pytest.raises(ModelLoadError, match="does not fit"):
        OpenGraphAU.from_checkpoint(tmp_path / "second.pth", stage=1)


def test_bare_state_dict_without_prefix_loads(tmp_path):
    torch.save(random_state_dict(opengraphau_layout(1, "resnet18"), seed=4), tmp_path / "bare.pth")
    model = OpenGraphAU.from_checkpoint(tmp_path / "bare.pth", backbone="resnet18")
    assert model.stage == 1 and model.global_linear.fc.out_features == 128


@pytest.fixture(scope="module")
def stage1_state_dict():
    return random_state_dict(opengraphau_layout(1, "resnet18"), seed=5)  # small: these files are refused anyway


def test_renamed_key_is_refused(stage1_state_dict, tmp_path):
    sd = OrderedDict(stage1_state_dict)
    sd["head.gnn.W.weight"] = sd.pop("head.gnn.U.weight")
    save_published(tmp_path / "renamed.pth", sd)
    with pytest.raises(ModelLoadError) as error:
        OpenGraphAU.from_checkpoint(tmp_path / "renamed.pth", backbone="resnet18")
    message = str(error.value)
    assert "\n" not in message
    assert "1 keys missing" in message and "head.gnn.U.weight" in message
    assert "1 unexpected" in message and "head.gnn.W.weight" in message


def test_changed_shape_is_refused(stage1_state_dict, tmp_path):
    sd = OrderedDict(stage1_state_dict)
    sd["head.main_sc"] = torch.zeros(12, 128)  # e.g. a BP4D (12 AU) checkpoint
    save_published(tmp_path / "shape.pth", sd)
    with pytest.raises(
        ModelLoadError, match=r"1 tensors have other shapes \(head\.main_sc \[12, 128\] \(model \[27, 128\]\)"
    ):
        OpenGraphAU.from_checkpoint(tmp_path / "shape.pth", backbone="resnet18")


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        OpenGraphAU.from_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a torch checkpoint"):
        OpenGraphAU.from_checkpoint(tmp_path / "junk.pth")
    torch.save({"config": argparse.Namespace(arc="resnet50")}, tmp_path / "objects.pth")
    with pytest.raises(ModelLoadError, match="weights_only"):
        OpenGraphAU.from_checkpoint(tmp_path / "objects.pth")
    torch.save({"epoch": 3, "best_f1": 0.22}, tmp_path / "no_weights.pth")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        OpenGraphAU.from_checkpoint(tmp_path / "no_weights.pth")


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="stage"):
        OpenGraphAU(stage=3)
    with pytest.raises(ConfigError, match="accepted: resnet18"):
        OpenGraphAU(backbone="swin_transformer_base")


# --- the head against the original's own formulation -------------------------------------------------------
def original_head(head: Head, x: torch.Tensor, stage: int) -> torch.Tensor:
    """The original Head.forward, op for op (loops, repeat/view, 0/1 incidence matrices, bmm)."""
    f_u = torch.cat([layer(x).unsqueeze(1) for layer in head.main_class_linears], dim=1)
    f_v = f_u.mean(dim=-2)
    b, n, c = f_v.shape
    if stage == 1:
        g = head.gnn
        si = torch.einsum("b i j , b j k -> b i k", f_v, f_v.transpose(1, 2))
        threshold = si.topk(k=4, dim=-1, largest=True)[0][:, :, -1].view(b, n, 1)
        adj = (si >= threshold).float()
        d = adj.sum(dim=-1) ** -0.5
        dm = torch.eye(n).view(1, n, n) * d.view(b, n, 1)
        a = torch.bmm(torch.bmm(dm, adj), dm)
        f_v = F.relu(f_v + g.bnv(torch.einsum("b i j, b j k->b i k", a, g.V(f_v)) + g.U(f_v)))
    else:
        gem = head.edge_extractor
        bb, nn_, dd, cc = f_u.shape
        glob = x.repeat(1, nn_, 1).view(bb, nn_, dd, cc)
        feat = gem.FAM(f_u, glob)
        feat_end = feat.repeat(1, 1, nn_, 1).view(bb, -1, dd, cc)
        feat_start = feat.repeat(1, nn_, 1, 1).view(bb, -1, dd, cc)
        edge = gem.bn(gem.edge_proj(gem.ARM(feat_start, feat_end))).mean(dim=-2)
        end = torch.zeros((n * n, n))
        for i in range(n):
            end[i * n : (i + 1) * n, i] = 1
        start = torch.eye(n).repeat(n, 1)
        for layer in head.gnn.graph_layers:
            res = f_v
            vix, vjx, e = layer.A(f_v), layer.B(f_v), layer.E(edge)
            edge = edge + F.relu(
                layer.bne(torch.einsum("ev, bvc -> bec", end, vix) + torch.einsum("ev, bvc -> bec", start, vjx) + e)
            )
            e = torch.softmax(torch.sigmoid(edge).view(b, n, n, c), 2).view(b, -1, c)
            ujx = torch.einsum("ev, bvc -> bec", start, layer.V(f_v))
            f_v = layer.U(f_v) + torch.einsum("ve, bec -> bvc", end.t(), e * ujx) / n
            f_v = res + F.relu(layer.bnv(f_v))
    main_sc = F.normalize(F.relu(head.main_sc), p=2, dim=-1)
    main_cl = (F.normalize(f_v, p=2, dim=-1) * main_sc.view(1, n, c)).sum(dim=-1)
    sub_cl = []
    for i, index in enumerate([0, 1, 2, 4, 7, 8, 11]):
        main_au = F.normalize(f_v[:, index], p=2, dim=-1)
        for sc in (head.sub_sc[2 * i], head.sub_sc[2 * i + 1]):
            sub_cl.append((main_au * F.normalize(F.relu(sc), p=2, dim=-1).view(1, c)).sum(dim=-1)[:, None])
    return torch.cat([main_cl, torch.cat(sub_cl, dim=-1)], dim=-1)


@pytest.mark.parametrize("stage", [1, 2])
def test_head_matches_the_original_formulation(stage):
    torch.manual_seed(stage)
    head = Head(16, stage)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for module in head.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    head.eval()
    x = torch.relu(torch.randn(3, 5, 16))
    with torch.no_grad():
        ours, theirs = head(x), original_head(head, x, stage)
    assert ours.shape == (3, 41)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# --- preprocessing -------------------------------------------------------------------------------------
def test_preprocess_shape_and_normalisation():
    colour = np.array([255, 0, 128], np.uint8)
    flat = Image.fromarray(np.broadcast_to(colour, (180, 400, 3)).copy())
    out = preprocess([flat, *face_images()])
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    expected = (colour / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(out[0].mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-5)
    assert out[0].std(dim=(1, 2)).max() < 1e-5


def test_preprocess_centre_crop_is_torchvision_s():
    # 256 wide, 320 high: already 256 on the short side, so no resize; crop offsets (16, 48).
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (320, 256, 3), dtype=np.uint8)
    out = preprocess(Image.fromarray(array))
    expected = (array[48:272, 16:240] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(
        out[0], torch.tensor(expected.transpose(2, 0, 1), dtype=torch.float32), rtol=0, atol=1e-5
    )


def test_preprocess_tensor_path_agrees_with_pil_path():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    smooth = np.array(Image.fromarray(small).resize((600, 480), Image.BICUBIC))  # smooth, landscape
    pil = preprocess([Image.fromarray(smooth)])
    tensor = preprocess(torch.from_numpy(smooth).permute(2, 0, 1)[None].float() / 255.0)
    assert tensor.shape == (1, 3, 224, 224)
    assert (pil - tensor).abs().mean() < 0.02
    with pytest.raises(ConfigError, match=r"\[B, 3, H, W\]"):
        preprocess(torch.zeros(3, 224, 224))


# --- AU names --------------------------------------------------------------------------------------------
def test_output_names_map_onto_synfer_slots():
    assert len(OPENGRAPHAU_AUS) == len(set(OPENGRAPHAU_AUS)) == 41
    assert [OPENGRAPHAU_TO_SYNFER[a] for a in OPENGRAPHAU_AUS[:27]] == list(OPENGRAPHAU_AUS[:27])
    assert OPENGRAPHAU_TO_SYNFER["AUL12"] == "L12" and OPENGRAPHAU_TO_SYNFER["AUR14"] == "R14"
    assert sorted(OPENGRAPHAU_SLOTS) == list(range(41))
    for output, slot in enumerate(OPENGRAPHAU_SLOTS):
        assert AU_NAMES[slot] == OPENGRAPHAU_TO_SYNFER[OPENGRAPHAU_AUS[output]]
    probs = np.random.default_rng(3).random((2, 41)).astype(np.float32)
    slots = to_synfer_slots(torch.from_numpy(probs))
    assert slots[1, AU_NAMES.index("L12")] == probs[1, OPENGRAPHAU_AUS.index("AUL12")]
