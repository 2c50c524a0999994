"""The judge: an expression classifier, independent of generation, that scores how legible the faces are.

``--judge KIND:PATH``:

- ``classifier:DIR``: any ``synfer.models.classifier`` folder (``config.json`` + ``model.safetensors``);
  its label set, input size, mean and std come from its config. Its fingerprint is
  ``synfer.models.fingerprint.module_sha256``, the hash the manifest records for a guidance classifier
  and label files record for relabel members, so a judge that guided or relabelled the data is found.
- ``onnx:FILE``: an ONNX FER model run with onnxruntime, e.g. HSEmotion / EmotiEffLib
  (``enet_b0_8_best_vgaf.onnx``: 224 px; ``enet_b2_8.onnx``: 260 px; RGB, [0, 1] then ImageNet mean/std,
  NCHW; classes ``anger,contempt,disgust,fear,happy,neutral,sad,surprise``). Its output order is
  declared with ``--judge-classes`` (names or aliases, mapped through ``synfer.expressions``); the input
  size comes from the model's static input shape or ``--judge-size``; mean and std are ImageNet's unless
  ``--judge-mean``/``--judge-std``; NCHW or NHWC is read off the input shape. A model with more outputs
  than classes (HSEmotion's ``*_mtl`` models add valence and arousal) needs ``--judge-outputs first``.
  Its fingerprint is the file's SHA-256: an ONNX export of a torch classifier has another hash than
  the classifier, so dependence on a guide cannot be seen through an export (docs/evaluation.md).

Judges see images through ``synfer.eval.preprocess.Preprocess`` like every other model here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, LabelError, ModelLoadError, first_line
from ..expressions import Expression, LabelSet, parse_expression
from ..registry import Registry
from .feature_backbones import IMAGENET_MEAN, IMAGENET_STD
from .model_files import file_sha256, local_model_path, model_files
from .preprocess import Preprocess

if TYPE_CHECKING:
    import torch

OUTPUT_RULES = ("exact", "first")


@dataclass(frozen=True)
class JudgeOptions:
    """What an ``onnx:`` judge needs declared (a ``classifier:`` judge declares it in its config)."""

    classes: tuple[str, ...] | None = None
    size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    outputs: str = "exact"
    resize: str = "squash"

    def __post_init__(self):
        if self.outputs not in OUTPUT_RULES:
            raise ConfigError(f"unknown --judge-outputs {self.outputs!r} (accepted: {', '.join(OUTPUT_RULES)})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ConfigError(f"--judge-{name} takes three numbers (R,G,B){', all positive' if name == 'std' else ''}, got {value}")
        if self.classes is not None:
            expressions = judge_classes(self.classes)
            if len(set(expressions)) != len(expressions):
                raise ConfigError(f"--judge-classes names an expression twice: {','.join(self.classes)}")


def judge_classes(names) -> tuple[Expression, ...]:
    """``anger,contempt,...`` (a string or a sequence) -> expressions, in the model's output order."""
    items = names.split(",") if isinstance(names, str) else list(names)
    try:
        return tuple(parse_expression(n.strip()) for n in items if str(n).strip())
    except LabelError as error:
        raise ConfigError(f"--judge-classes: {error}") from None


@dataclass(eq=False)
class Judge:
    """A loaded judge: pixels [B, 3, S, S] in [0, 1] -> scores [B, K] over ``classes`` (logits or probabilities)."""

    kind: str
    source: str
    fingerprint: str  # module_sha256 for a classifier, the file's SHA-256 for ONNX
    files: dict[str, str]
    classes: tuple[Expression, ...]
    preprocess: Preprocess
    forward: Callable[[torch.Tensor], np.ndarray] = field(repr=False)
    settings: dict = field(default_factory=dict)
    role: str = "judge"

    @property
    def name(self) -> str:
        return "judge"

    @property
    def dim(self) -> int:
        return len(self.classes)

    def record(self) -> dict:
        return {"role": self.role, "kind": self.kind, "fingerprint": self.fingerprint,
                "classes": [e.label for e in self.classes], "preprocessing": self.preprocess.to_dict(), **self.settings}

    def describe(self) -> dict:
        return {**self.record(), "source": self.source, "files": dict(self.files)}

    def check_covers(self, label_set: LabelSet) -> None:
        missing = [e.label for e in label_set.expressions if e not in self.classes]
        if missing:
            raise ConfigError(f"the judge {self.source} has no class for {', '.join(missing)}, which {label_set.name} "
                              f"needs (its classes: {', '.join(e.label for e in self.classes)})")

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        return np.asarray(self.forward(pixels), dtype=np.float32)


JudgeLoader = Callable[[str, "torch.device", JudgeOptions], Judge]
JUDGES: Registry[JudgeLoader] = Registry("judge kind")


def load_judge(spec: str, device: str | torch.device = "cpu", options: JudgeOptions | None = None) -> Judge:
    from ..devices import resolve_device

    kind, path = JUDGES.parse(spec)
    return JUDGES[kind](path, resolve_device(device), options or JudgeOptions())


@JUDGES.register("classifier")
def load_classifier_judge(path: str, device: torch.device, options: JudgeOptions) -> Judge:
    import torch

    from ..models.classifier import load_classifier
    from ..models.fingerprint import module_sha256

    folder = local_model_path(path, "judge classifier", "a synfer classifier folder")
    if options.classes is not None or options.size is not None or options.mean is not None or options.std is not None:
        raise ConfigError("--judge-classes, --judge-size, --judge-mean and --judge-std are for onnx: judges; "
                          "a classifier: judge declares them in its config.json")
    classifier = load_classifier(folder, device=device)

    def forward(pixels):
        with torch.inference_mode():
            return classifier(pixels.to(device)).float().cpu().numpy()

    return Judge("classifier", str(path), module_sha256(classifier), model_files(folder), classifier.label_set.expressions,
                 Preprocess(classifier.input_size, options.resize), forward,
                 {"normalisation": {"mean": classifier.mean.flatten().tolist(), "std": classifier.std.flatten().tolist()}})


def _onnx_layout(shape) -> tuple[str, int | None, int | None]:
    """(``NCHW`` or ``NHWC``, static size or None, static batch or None) from an ONNX input shape."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(dims) != 4:
        raise ModelLoadError(f"the ONNX judge's input has shape {shape}; a [batch, 3, H, W] (or [batch, H, W, 3]) image input is needed")
    layout = "NHWC" if dims[3] == 3 and dims[1] != 3 else "NCHW"
    height, width = (dims[1], dims[2]) if layout == "NHWC" else (dims[2], dims[3])
    size = height if height is not None and height == width else None
    return layout, size, dims[0]


@JUDGES.register("onnx")
def load_onnx_judge(path: str, device: torch.device, options: JudgeOptions) -> Judge:
    import onnxruntime

    file = local_model_path(path, "ONNX judge", "an .onnx file")
    if not file.is_file():
        raise ModelLoadError(f"ONNX judge {str(path)!r} is a folder; give the .onnx file")
    if options.classes is None:
        raise ConfigError("an onnx: judge needs --judge-classes: its output order, e.g. "
                          "anger,contempt,disgust,fear,happy,neutral,sad,surprise for HSEmotion's 8-class models")
    classes = judge_classes(options.classes)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(str(file), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for foreign or damaged files
        raise ModelLoadError(f"cannot load ONNX judge {str(path)!r}: {first_line(error)}") from None
    model_input = session.get_inputs()[0]
    layout, static_size, static_batch = _onnx_layout(model_input.shape)
    size = options.size or static_size
    if size is None:
        raise ConfigError(f"the ONNX judge {path} has no fixed input size; give it with --judge-size")
    if static_size is not None and size != static_size:
        raise ConfigError(f"the ONNX judge {path} takes {static_size} px inputs, not --judge-size {size}")
    mean, std = options.mean or IMAGENET_MEAN, options.std or IMAGENET_STD
    mean_a, std_a = np.asarray(mean, np.float32).reshape(1, 3, 1, 1), np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    output_name = session.get_outputs()[0].name

    def forward(pixels):
        x = (pixels.cpu().numpy().astype(np.float32) - mean_a) / std_a
        if layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        step = static_batch or x.shape[0]
        parts = [session.run([output_name], {model_input.name: np.ascontiguousarray(x[i:i + step])})[0]
                 for i in range(0, x.shape[0], step)]
        scores = np.concatenate(parts).reshape(x.shape[0], -1)
        if scores.shape[1] != len(classes):
            if options.outputs == "first" and scores.shape[1] > len(classes):
                return scores[:, :len(classes)]
            raise ConfigError(f"the ONNX judge gives {scores.shape[1]} outputs but --judge-classes names {len(classes)}"
                              + (" (use --judge-outputs first if the first ones are the class scores)"
                                 if scores.shape[1] > len(classes) else ""))
        return scores

    settings = {"normalisation": {"mean": list(mean), "std": list(std)}, "layout": layout, "outputs": options.outputs}
    return Judge("onnx", str(path), file_sha256(file), model_files(file), classes, Preprocess(size, options.resize), forward,
                 settings)
