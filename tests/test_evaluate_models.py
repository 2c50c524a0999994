"""Feature backbones, judges and the shared image path of evaluate, with tiny models built in code.

The builders here (tiny DINOv2 and CLIP folders saved with ``save_pretrained``, an ONNX judge made with
the ``onnx`` package, a tiny classifier) serve the other evaluate tests too. The ONNX "colour judge"
names the class whose colour (``fer_layouts.COLOURS``) is nearest to an image's mean colour, so on the
coloured faces of ``fer_layouts`` it is always right, whatever order its outputs are declared in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synfer.expressions import Expression, parse_expression

# HSEmotion's output order, which is not AffectNet's.
HSEMOTION_ORDER = ("anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def save_dinov2(folder: Path, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=8,
                          image_size=32)
    Dinov2Model(config).save_pretrained(folder)
    return folder


def save_clip(folder: Path, seed: int = 0, projection: bool = True) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                              patch_size=8, projection_dim=8)
    (CLIPVisionModelWithProjection if projection else CLIPVisionModel)(config).save_pretrained(folder)
    return folder


def save_colour_judge_onnx(path: Path, order=HSEMOTION_ORDER, extra_outputs: int = 0, size: int = 16) -> Path:
    """scores_k = c_k . m - |c_k|^2 / 2 for the mean colour m in [0, 1]: the argmax is the nearest class colour."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fer_layouts import COLOURS

    colours = np.asarray([COLOURS[parse_expression(name)] for name in order], dtype=np.float32) / 255.0  # [K, 3]
    weight = np.concatenate([colours, np.zeros((extra_outputs, 3), np.float32)]).T  # [3, K + extra]
    bias = np.concatenate([-0.5 * (colours**2).sum(axis=1), np.zeros(extra_outputs, np.float32)]).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "weight", "bias"], ["scores"])]
    graph = helper.make_graph(
        nodes, "colour_judge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_classifier(folder: Path, seed: int = 0, classes: str = "affectnet8") -> Path:
    from synfer.models.classifier import create_classifier

    torch.manual_seed(seed)
    create_classifier("tiny-resnet", classes).save_pretrained(folder)
    return folder


def per_class(labels) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(Expression))
    return {e.label: int(counts[int(e)]) for e in Expression}


# -- tests ------------------------------------------------------------------------------------------

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from synfer.errors import ConfigError, ModelLoadError, SynferError  # noqa: E402
from synfer.eval.feature_backbones import load_feature_backbone, parse_feature_spec  # noqa: E402
from synfer.eval.judges import JudgeOptions, load_judge  # noqa: E402
from synfer.eval.preprocess import Preprocess  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "dinov2": save_dinov2(root / "dinov2"),
        "clip": save_clip(root / "clip"),
        "clip_bare": save_clip(root / "clip_bare", projection=False),
        "onnx": save_colour_judge_onnx(root / "judge.onnx"),
        "onnx_mtl": save_colour_judge_onnx(root / "judge_mtl.onnx", extra_outputs=2),
        "classifier": save_classifier(root / "classifier"),
        "root": root,
    }


def random_images(n: int, seed: int = 0, size: int = 40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8 * (i % 2), 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("spec", ["facebook/dinov2-large", "dinov2:facebook/dinov2-large", "clip:openai/clip-vit-large-patch14",
                                  "inception:org/inception"])
def test_hub_ids_are_refused_with_one_line(spec):
    with pytest.raises(ModelLoadError, match="hub id; evaluate reads weights from local paths only") as caught:
        load_feature_backbone(spec)
    assert "\n" not in str(caught.value)


def test_judge_hub_ids_and_missing_paths_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="hub id"):
        load_judge("classifier:someone/fer-judge")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_judge(f"onnx:{tmp_path / 'nothing.onnx'}")


def test_a_bare_path_is_dinov2_and_unknown_kinds_are_named():
    assert parse_feature_spec("/models/dinov2-large") == ("dinov2", "/models/dinov2-large")
    assert parse_feature_spec("clip:/m") == ("clip", "/m")
    with pytest.raises(ConfigError, match="accepted: dinov2, clip, inception"):
        parse_feature_spec("swin:/m")


def test_dinov2_features_are_the_pooled_cls_token_of_synfer_preprocessed_pixels(models):
    from transformers import Dinov2Model

    backbone = load_feature_backbone(f"dinov2:{models['dinov2']}")
    assert backbone.preprocess == Preprocess(224, "squash") and backbone.dim == 16
    images = random_images(3)
    pixels = Preprocess.batch([backbone.preprocess.array(image) for image in images])
    model = Dinov2Model.from_pretrained(models["dinov2"]).eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=(pixels - mean) / std).last_hidden_state[:, 0]  # after the final LayerNorm
    np.testing.assert_allclose(backbone(pixels), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert set(backbone.files) == {"config.json", "model.safetensors"} and all(len(h) == 64 for h in backbone.files.values())


def test_a_classifier_backbone_gives_its_pooled_features_before_the_head(tmp_path):
    from synfer.models.classifier import create_classifier, load_classifier

    torch.manual_seed(0)
    create_classifier("tiny-resnet", "affectnet8").save_pretrained(tmp_path / "judge")
    backbone = load_feature_backbone(f"classifier:{tmp_path / 'judge'}")
    assert backbone.preprocess == Preprocess(32, "squash") and backbone.dim == 16
    pixels = Preprocess.batch([backbone.preprocess.array(image) for image in random_images(3)])
    classifier = load_classifier(tmp_path / "judge")
    with torch.no_grad():
        expected = classifier.backbone(classifier.preprocess(pixels))
    np.testing.assert_allclose(backbone(pixels), expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelLoadError, match="not a synfer classifier"):
        load_feature_backbone(f"classifier:{tmp_path}")


def test_clip_uses_the_projection_when_the_folder_has_one_and_never_a_random_one(models):
    projected = load_feature_backbone(f"clip:{models['clip']}")
    bare = load_feature_backbone(f"clip:{models['clip_bare']}")
    assert projected.dim == 8 and projected.output.startswith("projected")
    assert bare.dim == 16 and bare.output.startswith("pooled")
    pixels = Preprocess.batch([projected.preprocess.array(image) for image in random_images(2)])
    assert projected(pixels).shape == (2, 8) and bare(pixels).shape == (2, 16)
    # Loading the bare tower twice gives the same features: nothing was initialised at random.
    np.testing.assert_array_equal(bare(pixels), load_feature_backbone(f"clip:{models['clip_bare']}")(pixels))
    with pytest.raises(ConfigError, match="its own input size"):
        from synfer.eval.feature_backbones import BackboneOptions

        load_feature_backbone(f"clip:{models['clip']}", options=BackboneOptions(size=64))


def test_a_changed_backbone_changes_its_fingerprint(models, tmp_path):
    a = load_feature_backbone(f"dinov2:{models['dinov2']}")
    b = load_feature_backbone(f"dinov2:{save_dinov2(tmp_path / 'other', seed=1)}")
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == load_feature_backbone(f"dinov2:{models['dinov2']}").fingerprint


def test_inception_loads_the_fid_checkpoint_strictly_and_gives_2048_features(tmp_path):
    from synfer.models.inception import FID_WEIGHTS_NAME, FIDInceptionV3

    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), tmp_path / FID_WEIGHTS_NAME)
    backbone = load_feature_backbone(f"inception:{tmp_path}")
    assert backbone.preprocess.size == 299 and backbone.dim == 2048 and FID_WEIGHTS_NAME in backbone.files
    features = backbone(Preprocess.batch([backbone.preprocess.array(image) for image in random_images(2)]))
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    (tmp_path / "other").mkdir()
    with pytest.raises(ModelLoadError, match=FID_WEIGHTS_NAME):
        load_feature_backbone(f"inception:{tmp_path / 'other'}")


def test_preprocess_is_clean_fid_resizing_and_center_crop_keeps_aspect():
    from synfer.models.inception import clean_resize

    image = random_images(2)[1]  # 48 x 40
    np.testing.assert_array_equal(Preprocess(32).array(image), clean_resize(image, 32))
    cropped = Preprocess(32, "center-crop").array(image)
    np.testing.assert_array_equal(cropped, clean_resize(image.crop((4, 0, 44, 40)), 32))
    assert Preprocess.batch([cropped]).shape == (1, 3, 32, 32) and float(Preprocess.batch([cropped]).max()) <= 1.0


def test_onnx_judge_maps_its_declared_order_through_synfer_expressions(models):
    from fer_layouts import face

    judge = load_judge(f"onnx:{models['onnx']}", options=JudgeOptions(classes=HSEMOTION_ORDER, mean=(0, 0, 0), std=(1, 1, 1)))
    assert judge.preprocess.size == 16 and judge.classes[0] is Expression.ANGER and judge.settings["layout"] == "NCHW"
    images = [face(e, 0) for e in Expression]
    scores = judge(Preprocess.batch([judge.preprocess.array(image) for image in images]))
    predicted = [judge.classes[i] for i in scores.argmax(axis=1)]
    assert predicted == list(Expression)
    assert len(judge.fingerprint) == 64


def test_onnx_judge_options_are_checked(models):
    with pytest.raises(ConfigError, match="needs --judge-classes"):
        load_judge(f"onnx:{models['onnx']}")
    with pytest.raises(ConfigError, match="takes 16 px inputs"):
        load_judge(f"onnx:{models['onnx']}", options=JudgeOptions(classes=HSEMOTION_ORDER, size=32))
    with pytest.raises(ConfigError, match="unknown expression"):
        JudgeOptions(classes=("anger", "glee"))
    mtl = load_judge(f"onnx:{models['onnx_mtl']}", options=JudgeOptions(classes=HSEMOTION_ORDER))
    pixels = Preprocess.batch([mtl.preprocess.array(image) for image in random_images(2)])
    with pytest.raises(ConfigError, match="10 outputs but --judge-classes names 8.*--judge-outputs first"):
        mtl(pixels)
    first = load_judge(f"onnx:{models['onnx_mtl']}", options=JudgeOptions(classes=HSEMOTION_ORDER, outputs="first"))
    plain = load_judge(f"onnx:{models['onnx']}", options=JudgeOptions(classes=HSEMOTION_ORDER))
    np.testing.assert_allclose(first(pixels), plain(pixels), rtol=1e-6)


def test_classifier_judge_fingerprint_is_the_hash_guidance_and_relabel_record(models):
    from synfer.labelers.base import load_labeler
    from synfer.models.classifier import load_classifier
    from synfer.models.fingerprint import module_sha256

    judge = load_judge(f"classifier:{models['classifier']}")
    assert judge.fingerprint == module_sha256(load_classifier(models["classifier"]))
    assert judge.fingerprint == load_labeler(f"classifier:{models['classifier']}").fingerprint
    with pytest.raises(SynferError, match="for onnx: judges"):
        load_judge(f"classifier:{models['classifier']}", options=JudgeOptions(classes=HSEMOTION_ORDER))
