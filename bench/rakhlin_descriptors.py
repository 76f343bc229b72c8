"""Rakhlin et al. speed: descriptor pipeline vs the encoder's pure forward, and LightGBM fit time per model.

    python bench/rakhlin_descriptors.py [--encoder resnet50] [--crop 400] [--images 3] [--device auto]
        [--augmentations 50] [--crops 20] [--crops-per-batch 100] [--lgbm-images 360] [--lgbm-dim 2048]

1. **Descriptors**: crops/s of the whole per-image pipeline of
   :class:`~histo_lightning.methods.rakhlin.descriptors.DescriptorExtractor` (cached half-scale image on the device →
   seeded draws → crops with rotations/flips → H&E colour augmentation → encoder → Eq. 1 pooling)
   against the encoder's pure forward on the very same crop tensors (built beforehand, same batches).
   The ratio pipeline / forward is what the augmentation, cropping and pooling cost; the target on a GPU
   is >= 0.9 (the encoder dominates). Random encoder weights (speed does not depend on them); the images
   are H&E-like noise of BACH's half-scale size (768×1024).
2. **LightGBM**: seconds to fit one model with the authors' settings (§2.5) on ``lgbm-images`` × 50
   augmentation rows of ``lgbm-dim`` features (random, 4 classes with a weak signal), one thread, and to
   predict 40 test images × 50 augmentations; a run trains 6 × 5 = 30 such models per fold, ``n_jobs`` at
   a time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import histo_lightning.utils.resolvers  # noqa: F401
from histo_lightning.data.synthetic.he_render import (
    render_optical_density,
    sample_stain_style,
    smooth_noise,
)
from histo_lightning.methods.rakhlin.descriptors import DescriptorExtractor
from histo_lightning.methods.rakhlin.gradient_boosting import (
    BoostingSettings,
    fit_booster,
    predict_views,
)
from histo_lightning.methods.rakhlin.multicrop import augmented_crops, draw_colour, draw_crops

CONF = Path(__file__).resolve().parents[1] / "conf"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def he_like(rng: np.random.Generator, height: int = 768, width: int = 1024) -> np.ndarray:
    hema = np.clip(0.4 + 0.3 * smooth_noise(rng, (height, width), 6.0), 0.0, None)
    eosin = np.clip(0.35 + 0.2 * smooth_noise(rng, (height, width), 12.0), 0.0, None)
    rgb = render_optical_density(hema, eosin, sample_stain_style(rng))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def descriptor_bench(args: argparse.Namespace, device: torch.device) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"encoder={args.encoder}", "encoder.weights=random"])
    encoder = instantiate(cfg.encoder)
    views = {"n_augmentations": args.augmentations, "n_crops": args.crops}
    module = DescriptorExtractor(
        encoder, args.crop, views, crops_per_batch=args.crops_per_batch
    ).to(device)
    module.eval()
    rng = np.random.default_rng(0)
    images = [
        torch.from_numpy(he_like(rng)).to(device).permute(2, 0, 1).contiguous()
        for _ in range(args.images + 1)
    ]
    keys = [f"b{i:03d}" for i in range(len(images))]
    n_crops = args.augmentations * args.crops
    per_batch = max(1, args.crops_per_batch // args.crops)

    with torch.no_grad():
        module(images[0], keys[0])  # warm-up (cuDNN autotuning, allocator)
        sync(device)
        began = time.perf_counter()
        for image, key in zip(images[1:], keys[1:]):
            module(image, key)
        sync(device)
        pipeline_s = time.perf_counter() - began

        # the same crops, built beforehand, through the encoder alone in the same batches
        batches = []
        for image, key in zip(images[1:], keys[1:]):
            colour = draw_colour(module.views, key)
            crops = draw_crops(module.views, key, args.crop, image.shape[1], image.shape[2])
            for start in range(0, args.augmentations, per_batch):
                chosen = range(start, min(start + per_batch, args.augmentations))
                batches.append(augmented_crops(image, colour, crops, chosen).float().div_(255.0))
        encoder(batches[0])
        sync(device)
        began = time.perf_counter()
        for batch in batches:
            encoder(batch)
        sync(device)
        forward_s = time.perf_counter() - began

    total = args.images * n_crops
    print(
        f"descriptors [{args.encoder}, crop {args.crop}, {args.augmentations}x{args.crops} views, "
        f"{args.crops_per_batch} crops/batch, {device}]:"
    )
    print(
        f"  whole pipeline : {total / pipeline_s:8.1f} crops/s ({pipeline_s / args.images:.2f} s/image)"
    )
    print(
        f"  encoder forward: {total / forward_s:8.1f} crops/s ({forward_s / args.images:.2f} s/image)"
    )
    print(f"  ratio pipeline/forward = {forward_s / pipeline_s:.3f} (target >= 0.9 on a GPU)")


def lightgbm_bench(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    views = 50
    labels = np.arange(args.lgbm_images) % 4
    features = rng.gamma(1.0, 1.0, size=(args.lgbm_images, views, args.lgbm_dim)).astype(np.float32)
    features[:, :, :32] += labels[:, None, None] * 0.3  # a weak class signal in a few features
    test = rng.gamma(1.0, 1.0, size=(40, views, args.lgbm_dim)).astype(np.float32)
    settings = BoostingSettings()
    params = settings.params(4, fold=1, seed=0)
    began = time.perf_counter()
    booster = fit_booster(features, labels, params, settings.num_rounds)
    fit_s = time.perf_counter() - began
    began = time.perf_counter()
    predict_views(booster, test)
    predict_s = time.perf_counter() - began
    print(
        f"LightGBM [authors' settings, {args.lgbm_images} images x {views} augmentations x "
        f"{args.lgbm_dim} features, 1 thread]: fit {fit_s:.1f} s/model, predict 40 images "
        f"{predict_s:.2f} s; one fold of the paper (30 models) = {30 * fit_s / 60:.1f} CPU-minutes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--crop", type=int, default=400)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--augmentations", type=int, default=50)
    parser.add_argument("--crops", type=int, default=20)
    parser.add_argument("--crops-per-batch", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lgbm-images", type=int, default=360)
    parser.add_argument("--lgbm-dim", type=int, default=2048)
    parser.add_argument("--skip-lightgbm", action="store_true")
    parser.add_argument("--skip-descriptors", action="store_true")
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if not args.skip_descriptors:
        descriptor_bench(args, device)
    if not args.skip_lightgbm:
        lightgbm_bench(args)


if __name__ == "__main__":
    main()
