"""Build the example's dataset: four Fashion-MNIST classes as 16x16 colour PNGs in
torchvision's ImageFolder layout (``fashion4/{train,test}/CLASS/*.png``).

Each image is shrunk to 16x16 and tinted with a random colour (independent of its class),
so the set differs from MNIST in channels (3), size (16) and classes (4). Needs
Fashion-MNIST under the data root (``mlscale data prepare --dataset fashion-mnist``).

    python make_dataset.py [--train 2400] [--test 800] [--out fashion4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mlscale.data import load

CLASSES = {0: "t-shirt", 1: "trouser", 7: "sneaker", 8: "bag"}  # Fashion-MNIST label -> name


def _write_split(images: torch.Tensor, labels: torch.Tensor, count: int, folder: Path,
                 rng: np.random.Generator) -> None:
    keep = torch.nonzero(torch.isin(labels, torch.tensor(list(CLASSES)))).flatten()[:count]
    small = F.interpolate(images[keep].unsqueeze(1).float(), size=16, mode="area")
    tints = rng.uniform(0.4, 1.0, size=(len(keep), 3, 1, 1))
    rgb = np.clip(small.numpy() * tints, 0, 255).astype(np.uint8)
    for index, (pixels, label) in enumerate(zip(rgb, labels[keep].tolist(), strict=True)):
        target = folder / CLASSES[label] / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.transpose(1, 2, 0)).save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2400)
    parser.add_argument("--test", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion4")
    args = parser.parse_args()
    data = load("fashion-mnist")
    rng = np.random.default_rng(0)
    _write_split(data.train_images, data.train_labels, args.train, args.out / "train", rng)
    _write_split(data.test_images, data.test_labels, args.test, args.out / "test", rng)
    print(f"wrote {args.train} train and {args.test} test images to {args.out}")


if __name__ == "__main__":
    main()
