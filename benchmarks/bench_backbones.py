"""CPU time of the foundation-model backbones next to the plain model forward, and the memory of log binning.

Full-size configurations with random weights (no download; random weights run at real speed). For each
backbone, input size and variant (stride = patch; stride ~patch/2 + log binning), it times

* ``forward``: the model's own forward on the already-preprocessed input, at the same patch stride
  (so the same number of tokens), and
* ``medshot``: the backbone call, image in -> :class:`FeatureMap` out (resize, normalisation, forward
  up to the layer read, grid reshaping, log binning),

and prints their ratio (medshot's overhead; the target is under 1.3x). ``--memory`` measures, in a
fresh process, the peak RSS while producing log-binned ``dinov2_vits14`` descriptors of a 512x512
image at stride 7, next to the size of one copy of the result.

Usage::

    python benchmarks/bench_backbones.py --quick --memory   # a few minutes on 2 idle cores
    python benchmarks/bench_backbones.py --sizes 224 448 518 --sd --memory
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def full_size_model(name: str):
    """``(family, model)`` with the real architecture of ``name`` and random weights."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
    if name == "dinov2_vits14":
        return "dinov2", tf.Dinov2Model(tf.Dinov2Config(patch_size=14, image_size=518, **small)).eval()
    if name == "dinov2_vits14_reg":
        return "dinov2_reg", tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(
            patch_size=14, image_size=518, num_register_tokens=4, **small)).eval()
    if name == "dino_vits8":
        return "dino", tf.ViTModel(tf.ViTConfig(patch_size=8, image_size=224, intermediate_size=1536, **small),
                                   add_pooling_layer=False).eval()
    if name == "dinov3_vits16":
        return "dinov3", tf.DINOv3ViTModel(tf.DINOv3ViTConfig(patch_size=16, image_size=224, intermediate_size=1536,
                                                              num_register_tokens=4, **small)).eval()
    if name == "clip_vitb16":
        return "clip", tf.CLIPVisionModel(tf.CLIPVisionConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
            image_size=224)).eval()
    raise KeyError(name)


def full_size_sd():
    """SD 1.5's UNet and VAE (default diffusers configs = SD 1.x) with random weights; empty-prompt embedding."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).eval()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    return unet, vae, scheduler, torch.zeros(1, 77, 768)


def timed_pair(forward, call, repeats: int) -> tuple[float, float]:
    """Median seconds of ``forward()`` and ``call()``, interleaved so that load from other processes on a
    shared machine hits both alike. ``call`` is run once first (warm-up: first-call allocations and lazy
    initialisation are not what a user waits for per image)."""
    call()
    t_forward, t_call = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        t_forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        call()
        t_call.append(time.perf_counter() - start)
    return statistics.median(t_forward), statistics.median(t_call)


def bench_vit(name: str, sizes, repeats: int, overlap_sizes=None) -> list[tuple]:
    import torch

    from medshot.features.vit import FAMILIES, ViTBackbone

    family, model = full_size_model(name)
    rows = []
    for size in sizes:
        image = np.random.default_rng(size).random((size, size)).astype(np.float32)
        patch = model.get_submodule(FAMILIES[family].patch_conv).kernel_size[0]
        for stride, binned in ((None, False), (patch // 2, True)):
            if binned and overlap_sizes is not None and size not in overlap_sizes:
                continue
            bb = ViTBackbone(name, FAMILIES[family], model, stride=stride, log_bin=binned)
            pv = bb.preprocess(image)

            def forward(bb=bb, pv=pv):
                with torch.inference_mode(), bb.overlapping() as m:
                    m(pixel_values=pv, **dict(bb.family.forward_kwargs))

            t_forward, t_medshot = timed_pair(forward, lambda bb=bb, image=image: bb(image), repeats)
            fmap = bb(image)
            variant = f"stride {bb.stride}" + (" + log-bin" if binned else "")
            rows.append((name, size, tuple(pv.shape[-2:]), variant, fmap.data.shape, t_forward, t_medshot))
    return rows


def bench_sd(sizes, repeats: int) -> list[tuple]:
    import torch

    from medshot.features.diffusion import DiffusionBackbone

    unet, vae, scheduler, embeds = full_size_sd()
    rows = []
    for size in sizes:
        image = np.random.default_rng(size).random((size, size)).astype(np.float32)
        bb = DiffusionBackbone("sd15", unet, vae, scheduler, embeds, up_block=1)
        pv = bb.preprocess(image)

        def forward(bb=bb, pv=pv):
            # the plain model work: VAE encoding and one full UNet pass
            with torch.inference_mode():
                latents = bb.vae.encode(pv).latent_dist.mode() * bb.vae.config.scaling_factor
                bb.unet(latents, torch.tensor([261]), encoder_hidden_states=embeds)

        t_forward, t_medshot = timed_pair(forward, lambda bb=bb, image=image: bb(image), repeats)
        rows.append(("sd15", size, tuple(pv.shape[-2:]), "up_block 1", bb(image).data.shape, t_forward, t_medshot))
    return rows


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def memory_child(threads: int) -> None:
    """Peak RSS during one log-binned dinov2_vits14 call at stride 7 on a 512x512 image."""
    import torch

    from medshot.features.vit import FAMILIES, ViTBackbone

    torch.set_num_threads(threads)
    family, model = full_size_model("dinov2_vits14")
    bb = ViTBackbone("dinov2_vits14", FAMILIES[family], model, stride=7, log_bin=True)
    bb(np.zeros((64, 64), np.float32))  # warm-up at a small size
    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    start = time.perf_counter()
    fmap = bb(image)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    out_mb = fmap.data.nbytes / 2**20
    print(f"dinov2_vits14 stride 7 + log-bin, 512x512 -> model input {bb.input_size((512, 512))}, "
          f"grid {fmap.grid_shape}, {fmap.channels} channels")
    print(f"  one copy of the result: {out_mb:.0f} MB; RSS before the call {before:.0f} MB, peak during it "
          f"{peak[0]:.0f} MB (+{peak[0] - before:.0f} MB = {(peak[0] - before) / out_mb:.2f} result copies); "
          f"{seconds:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two backbones at 224 and 448, overlapping patches at 224 only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 518])
    parser.add_argument("--backbones", nargs="+",
                        default=["dinov2_vits14", "dinov2_vits14_reg", "dino_vits8", "dinov3_vits16", "clip_vitb16"])
    parser.add_argument("--sd", action="store_true", help="also SD 1.5 (slow: a full UNet pass per call)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of 512x512 dinov2_vits14 stride 7 + log-bin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.threads)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    overlap_sizes = None
    if args.quick:
        args.sizes, overlap_sizes = [224, 448], [224]
        args.backbones = ["dinov2_vits14", "clip_vitb16"]
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, median of {args.repeats} after a warm-up")
    print("| backbone | image | model input | variant | features (C, h, w) | forward s | medshot s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.backbones:
        new = bench_vit(name, args.sizes, args.repeats, overlap_sizes)
        _print(new)
        rows += new
    if args.sd:
        sd_rows = bench_sd([min(s, 512) // 64 * 64 for s in args.sizes], max(1, args.repeats - 1))
        _print(sd_rows)
        rows += sd_rows
    worst = max(r[6] / r[5] for r in rows)
    print(f"\nworst medshot / forward ratio: {worst:.2f} (target < 1.3)")
    if args.memory:
        print()
        subprocess.run([sys.executable, __file__, "--memory-child", "--threads", str(args.threads)], check=True)
    return 0


def _print(rows) -> None:
    for name, size, inp, variant, shape, t_forward, t_medshot in rows:
        print(f"| {name} | {size} | {inp[0]}x{inp[1]} | {variant} | {shape} | {t_forward:.3f} | {t_medshot:.3f} | "
              f"{t_medshot / t_forward:.2f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
