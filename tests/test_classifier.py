import json

import pytest
import torch

from synfer.errors import ConfigError, LabelError, ModelLoadError
from synfer.expressions import AFFECTNET7, AFFECTNET8
from synfer.models.backbone_specs import BACKBONES
from synfer.models.backbones import create_backbone
from synfer.models.classifier import create_classifier, load_classifier


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-convnext", "tiny-vit"])
def test_tiny_classifiers_map_any_size_images_to_logits(name):
    torch.manual_seed(0)
    model = create_classifier(name, "affectnet7").eval()
    for size in (32, 48):
        logits = model(torch.rand(2, 3, size, size))
        assert logits.shape == (2, 7)
    assert model.label_set is AFFECTNET7


def test_preprocess_is_differentiable_and_normalises():
    model = create_classifier("tiny-resnet")
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    model(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    flat = torch.full((1, 3, 32, 32), 0.5)
    expected = (0.5 - model.mean.flatten()) / model.std.flatten()
    assert torch.allclose(model.preprocess(flat)[0, :, 0, 0], expected)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("tiny-convnext", "affectnet8").eval()
    model.save_pretrained(tmp_path / "clf", extra={"trained_on": "toy"})
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["labels"] == AFFECTNET8.names and config["trained_on"] == "toy"
    assert not list((tmp_path / "clf").glob("*.bin"))
    loaded = load_classifier(tmp_path / "clf")
    images = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded.input_size == model.input_size and loaded.label_set is AFFECTNET8


def test_target_indices_refuse_labels_outside_the_set():
    model = create_classifier("tiny-resnet", "affectnet7")
    assert model.target_indices([1, 6, 0]).tolist() == [1, 6, 0]
    with pytest.raises(LabelError, match="not in label set"):
        model.target_indices([7])
    with pytest.raises(LabelError):
        model.target_indices([9])


def test_factory_errors(tmp_path):
    with pytest.raises(ConfigError, match="accepted: resnet18"):
        create_backbone("alexnet")
    with pytest.raises(ModelLoadError, match="could not load"):
        create_backbone("resnet18", weights=str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match="not a synfer classifier"):
        load_classifier(tmp_path)
    assert {"resnet18", "resnet50", "convnext-tiny", "vit-base"} <= set(BACKBONES)


def test_real_backbones_build_on_meta():
    with torch.device("meta"):
        resnet18 = create_backbone("resnet18")
        resnet50 = create_backbone("resnet50")
    assert resnet18.feature_dim == 512 and resnet50.feature_dim == 2048
    assert 11_000_000 < sum(p.numel() for p in resnet18.parameters()) < 12_000_000


def test_the_small_image_resnet_reads_32_pixel_faces_at_its_64_pixel_input():
    from synfer.models.classifier import create_classifier

    classifier = create_classifier("resnet-small", "affectnet8")
    assert classifier.input_size == 64 and sum(p.numel() for p in classifier.parameters()) < 2_000_000
    with torch.no_grad():
        assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 8)  # resized to its input size first
