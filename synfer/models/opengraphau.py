"""OpenGraphAU (Luo et al., IJCAI 2022) in plain torch: the 41-AU detector trained on hybrid data.

This is a port of the ``MEFARG`` model of the OpenGraphAU repository (``model/ANFL.py`` for stage 1,
``model/MEFL.py`` for stage 2) with a torchvision-layout ResNet backbone, so that the published
checkpoints (``OpenGprahAU-ResNet50_first_stage.pth``, ``..._second_stage.pth``) load strictly
without torchvision. Module names and shapes are the original's; the forward pass is the original's,
written with tensor indexing where the original loops or multiplies by 0/1 incidence matrices.

The model: ResNet features [B, 49, 2048] -> ``global_linear`` (2048 -> 512) -> one ``LinearBlock``
per main AU, averaged over the 49 positions into 27 node features -> a graph over the nodes (stage 1:
each node's top-4 most similar nodes; stage 2: learned multi-dimensional edge features and a gated
GCN) -> each score is the cosine between a node feature and a learned non-negative class vector.
The 14 left/right sub-AUs reuse the node of their bilateral AU with their own class vectors.

The outputs are occurrence probabilities in [0, 1] *without* a sigmoid: node features come out of a
ReLU and the class vectors pass one, so every cosine lies in [0, 1]; the original trains them with
a cross-entropy on these values directly and calls an AU present at ``OCCURRENCE_THRESHOLD`` (0.5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..aus import AU_INDEX, NUM_AUS
from ..errors import ConfigError, ModelLoadError
from .torch_weights import load_strict, read_checkpoint, unwrap_state_dict
from .tv_resnet import ARCHITECTURES, resnet

# The 41 outputs in the model's order, named as the original prints them (utils.hybrid_infolist):
# 27 bilateral AUs, then left/right pairs.
OPENGRAPHAU_AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14", "AU15", "AU16",
    "AU17", "AU18", "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU32", "AU38", "AU39",
    "AUL1", "AUR1", "AUL2", "AUR2", "AUL4", "AUR4", "AUL6", "AUR6", "AUL10", "AUR10", "AUL12", "AUR12",
    "AUL14", "AUR14",
)  # fmt: skip
NUM_MAIN_AUS = 27
NUM_SUB_AUS = 14
# Which main-AU node each left/right pair reads (ANFL/MEFL ``Head.sub_list``). Index 8 is AU11, not AU12
# (index 9): the published weights were trained with L12/R12 scored from AU11's node, so the port keeps it.
SUB_AU_NODES: tuple[int, ...] = (0, 1, 2, 4, 7, 8, 11)

OPENGRAPHAU_TO_SYNFER: dict[str, str] = {name: name if name[2] not in "LR" else name[2:] for name in OPENGRAPHAU_AUS}
# For each output, its slot in synfer's 41-slot table (the identity today: synfer's slots are in this order).
OPENGRAPHAU_SLOTS: tuple[int, ...] = tuple(AU_INDEX[OPENGRAPHAU_TO_SYNFER[name]] for name in OPENGRAPHAU_AUS)

OCCURRENCE_THRESHOLD = 0.5  # demo.py and the F1/accuracy statistics of train/test use 0.5
NEIGHBOR_NUM = 4  # config/hybrid_config.yaml
RESIZE = 256
CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = (1, 2)


class LinearBlock(nn.Module):
    """Linear -> BatchNorm over features -> ReLU, applied to every token of [B, T, C_in]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x).transpose(1, 2))).transpose(1, 2)


class NodeGraph(nn.Module):
    """Stage 1 (ANFL): X' = ReLU(X + BN(A V(X) + U(X))), A the normalised top-k similarity graph."""

    def __init__(self, channels: int, num_nodes: int, neighbor_num: int = NEIGHBOR_NUM):
        super().__init__()
        self.neighbor_num = neighbor_num
        self.U = nn.Linear(channels, channels)
        self.V = nn.Linear(channels, channels)
        self.bnv = nn.BatchNorm1d(num_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each node links to the nodes whose dot product with it reaches its k-th largest ("dots" metric);
        # ties can give more than k links, as in the original.
        similarity = x.detach() @ x.detach().transpose(1, 2)
        kth = similarity.topk(self.neighbor_num, dim=-1).values[..., -1:]
        adjacency = (similarity >= kth).to(x.dtype)
        inv_sqrt_degree = adjacency.sum(-1).pow(-0.5)
        adjacency = inv_sqrt_degree[:, :, None] * adjacency * inv_sqrt_degree[:, None, :]  # D^-1/2 A D^-1/2
        return F.relu(x + self.bnv(adjacency @ self.V(x) + self.U(x)))


class CrossAttn(nn.Module):
    """Attention over the last-but-one axis: queries from ``y``, keys and values from ``x``."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear_q = nn.Linear(channels, channels // 2)
        self.linear_k = nn.Linear(channels, channels // 2)
        self.linear_v = nn.Linear(channels, channels)
        self.scale = (channels // 2) ** -0.5

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        attention = (self.linear_q(y) @ self.linear_k(x).transpose(-2, -1) * self.scale).softmax(dim=-1)
        return attention @ self.linear_v(x)


class EdgeExtractor(nn.Module):
    """Stage 2 (MEFL's GEM): one feature map per ordered node pair (i, j), edge e = i * N + j."""

    def __init__(self, channels: int, num_nodes: int):
        super().__init__()
        self.FAM = CrossAttn(channels)
        self.ARM = CrossAttn(channels)
        self.edge_proj = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm2d(num_nodes * num_nodes)

    def forward(self, node_maps: torch.Tensor, global_map: torch.Tensor) -> torch.Tensor:
        b, n, d, c = node_maps.shape
        feat = self.FAM(node_maps, global_map[:, None].expand(b, n, d, c))
        to_node = feat[:, :, None].expand(b, n, n, d, c).reshape(b, n * n, d, c)  # edge (i, j) -> node i
        from_node = feat[:, None].expand(b, n, n, d, c).reshape(b, n * n, d, c)  # edge (i, j) -> node j
        return self.bn(self.edge_proj(self.ARM(from_node, to_node)))


class GatedGraphLayer(nn.Module):
    """Stage 2 (MEFL's GNNLayer): a gated GCN updating node features and edge features together."""

    def __init__(self, channels: int, num_nodes: int):
        super().__init__()
        self.num_nodes = num_nodes
        self.U = nn.Linear(channels, channels, bias=False)
        self.V = nn.Linear(channels, channels, bias=False)
        self.A = nn.Linear(channels, channels, bias=False)
        self.B = nn.Linear(channels, channels, bias=False)
        self.E = nn.Linear(channels, channels, bias=False)
        self.bnv = nn.BatchNorm1d(num_nodes)
        self.bne = nn.BatchNorm1d(num_nodes * num_nodes)

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        nodes = torch.arange(n, device=x.device)
        to_node, from_node = nodes.repeat_interleave(n), nodes.repeat(n)  # edge e = i * n + j -> i, j
        edge = edge + F.relu(self.bne(self.A(x)[:, to_node] + self.B(x)[:, from_node] + self.E(edge)))
        gate = torch.sigmoid(edge).view(b, n, n, c).softmax(dim=2)  # normalised over the senders j of node i
        messages = (gate * self.V(x)[:, None]).sum(dim=2) / n
        return x + F.relu(self.bnv(self.U(x) + messages)), edge


class EdgeGraph(nn.Module):
    def __init__(self, channels: int, num_nodes: int, layer_num: int = 2):
        super().__init__()
        self.graph_layers = nn.ModuleList(GatedGraphLayer(channels, num_nodes) for _ in range(layer_num))

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.graph_layers:
            x, edge = layer(x, edge)
        return x, edge


class Head(nn.Module):
    """AU-specific features, the AU graph of the stage, and cosine scores against class vectors."""

    def __init__(self, channels: int, stage: int, neighbor_num: int = NEIGHBOR_NUM):
        super().__init__()
        self.stage = stage
        self.main_class_linears = nn.ModuleList(LinearBlock(channels, channels) for _ in range(NUM_MAIN_AUS))
        if stage == 1:
            self.gnn = NodeGraph(channels, NUM_MAIN_AUS, neighbor_num)
        else:
            self.edge_extractor = EdgeExtractor(channels, NUM_MAIN_AUS)
            self.gnn = EdgeGraph(channels, NUM_MAIN_AUS)
        self.main_sc = nn.Parameter(torch.empty(NUM_MAIN_AUS, channels))
        self.sub_sc = nn.Parameter(torch.empty(NUM_SUB_AUS, channels))
        nn.init.xavier_uniform_(self.main_sc)
        nn.init.xavier_uniform_(self.sub_sc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node_maps = torch.stack([linear(x) for linear in self.main_class_linears], dim=1)  # [B, 27, T, C]
        nodes = node_maps.mean(dim=-2)
        if self.stage == 1:
            nodes = self.gnn(nodes)
        else:
            nodes, _ = self.gnn(nodes, self.edge_extractor(node_maps, x).mean(dim=-2))
        nodes = F.normalize(nodes, p=2, dim=-1)
        main = (nodes * F.normalize(F.relu(self.main_sc), p=2, dim=-1)).sum(-1)
        # Sub-AU 2k (left) and 2k + 1 (right) both read node SUB_AU_NODES[k].
        parents = nodes[:, list(SUB_AU_NODES)].repeat_interleave(2, dim=1)
        sub = (parents * F.normalize(F.relu(self.sub_sc), p=2, dim=-1)).sum(-1)
        return torch.cat([main, sub], dim=-1)


class OpenGraphAU(nn.Module):
    """OpenGraphAU's MEFARG: normalised 224x224 pixels [B, 3, 224, 224] -> 41 AU probabilities [B, 41].

    ``stage`` 1 is the ANFL model (the one ``demo.py`` runs), 2 the MEFL model. Outputs are in
    ``OPENGRAPHAU_AUS`` order. Make inputs with :func:`preprocess`. Stage 2 builds 27 x 27 edge maps of
    49 x 512 features per image, about half a GiB of activations per image at 224 pixels.
    """

    def __init__(self, stage: int = 1, backbone: str = "resnet50", neighbor_num: int = NEIGHBOR_NUM):
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"unknown OpenGraphAU stage {stage!r} (accepted: 1, 2)")
        if backbone not in ARCHITECTURES:
            raise ConfigError(f"unknown OpenGraphAU backbone {backbone!r} (accepted: {', '.join(ARCHITECTURES)})")
        self.stage = stage
        self.backbone = resnet(backbone, num_classes=None)  # the original sets backbone.fc = None
        in_channels = self.backbone.num_features
        self.global_linear = LinearBlock(in_channels, in_channels // 4)
        self.head = Head(in_channels // 4, stage, neighbor_num)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(pixels).flatten(2).transpose(1, 2)  # [B, H*W, C]
        # The cosines lie in [0, 1] by construction; the clamp only removes rounding overshoot.
        return self.head(self.global_linear(features)).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image] | Image.Image | torch.Tensor) -> torch.Tensor:
        """Probabilities [N, 41] for raw images, preprocessed as the original does at test time."""
        parameter = next(self.parameters())
        return self(preprocess(images).to(parameter.device, parameter.dtype))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        stage: int | None = None,
        backbone: str = "resnet50",
    ) -> OpenGraphAU:
        """The model of a published checkpoint, loaded strictly, in eval mode on ``device``.

        The file is what the original training scripts save, ``{"epoch", "state_dict", "optimizer"}``
        with ``module.``-prefixed keys (DataParallel); a bare state dict also loads. The prefix is
        removed as the original ``utils.load_state_dict`` does. ``stage=None`` reads the stage from the
        keys (stage 2 has ``head.edge_extractor``).
        """
        source = f"OpenGraphAU checkpoint {str(path)!r}"
        state_dict = unwrap_state_dict(read_checkpoint(path, "OpenGraphAU"), source)
        if stage is None:
            stage = 2 if any(k.startswith("head.edge_extractor.") for k in state_dict) else 1
        model = cls(stage=stage, backbone=backbone)
        try:
            load_strict(model, state_dict, source)
        except ModelLoadError as error:
            raise ModelLoadError(f"{error} [built as stage {stage} with {backbone}; see stage=, backbone=]") from None
        return model.to(device).eval()


def _resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``size``, the longer one is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _crop_offsets(width: int, height: int, crop: int = CROP) -> tuple[int, int]:
    """torchvision ``CenterCrop``: offsets rounded with Python's ``round``."""
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def preprocess(images: Sequence[Image.Image] | Image.Image | torch.Tensor) -> torch.Tensor:
    """The original's test-time transform (``utils.image_eval``): resize 256, centre-crop 224, ImageNet norm.

    PIL images (any mode, converted to RGB as its loader does) follow torchvision's PIL path exactly:
    bilinear resize of the uint8 image, crop, /255, normalise. A float tensor [B, 3, H, W] in [0, 1]
    (or uint8 in [0, 255]) is resized with antialiased bilinear interpolation, torchvision's tensor
    path, which is close to but not bit-identical with PIL's. Returns float32 [N, 3, 224, 224].
    """
    if isinstance(images, torch.Tensor):
        return _preprocess_tensor(images)
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ConfigError("no images to preprocess (give PIL images or a [B, 3, H, W] tensor)")
    batch = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise ConfigError(
                f"cannot preprocess a {type(image).__name__} (accepted: PIL images, a [B, 3, H, W] tensor)"
            )
        image = image.convert("RGB")
        size = _resized_size(*image.size)
        image = image.resize(size, Image.BILINEAR)
        left, top = _crop_offsets(*size)
        image = image.crop((left, top, left + CROP, top + CROP))
        batch.append(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
    return _normalise(torch.stack(batch).float() / 255.0)


def _preprocess_tensor(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ConfigError(f"an image batch is [B, 3, H, W]; got shape {list(pixels.shape)}")
    pixels = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
    height, width = pixels.shape[-2:]
    new_width, new_height = _resized_size(width, height)
    if (new_height, new_width) != (height, width):
        pixels = F.interpolate(
            pixels, size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True
        )
    left, top = _crop_offsets(new_width, new_height)
    return _normalise(pixels[:, :, top : top + CROP, left : left + CROP])


def to_synfer_slots(probabilities: torch.Tensor | np.ndarray) -> np.ndarray:
    """OpenGraphAU outputs [..., 41] rearranged into synfer's slot order (``synfer.aus.AU_NAMES``)."""
    probs = np.asarray(probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities)
    if probs.shape[-1:] != (len(OPENGRAPHAU_AUS),):
        raise ConfigError(f"OpenGraphAU gives {len(OPENGRAPHAU_AUS)} probabilities per image; got shape {probs.shape}")
    out = np.zeros(probs.shape[:-1] + (NUM_AUS,), dtype=np.float32)
    out[..., list(OPENGRAPHAU_SLOTS)] = probs
    return out
