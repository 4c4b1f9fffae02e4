"""Stable Diffusion (DIFT) features on a tiny random pipeline: the up-block asked for, at its resolution,
ensembling, and loading a ``save_pretrained`` folder through the registry offline in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from medshot.features.diffusion import DiffusionBackbone  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer(folder: Path):
    """A CLIP BPE tokenizer with a handful of tokens (enough for the empty prompt and a word or two)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "b": 3, "a</w>": 4, "b</w>": 5, "ab</w>": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)


def tiny_sd(seed: int = 0):
    """UNet, VAE, DDPM scheduler, tokenizer and text encoder: SD's real classes at toy sizes."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        layers_per_block=1).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=8,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return unet, vae, scheduler, text_encoder


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """The folder layout of a diffusers Stable Diffusion checkpoint (what ``pipeline.save_pretrained`` writes)."""
    unet, vae, scheduler, text_encoder = tiny_sd(seed)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tiny_tokenizer(folder / "tokenizer_src").save_pretrained(folder / "tokenizer")
    return folder


def prompt_embeds(text_encoder, tmp_path, prompt=""):
    tok = tiny_tokenizer(tmp_path / "tok")
    ids = tok(prompt, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        return text_encoder(ids)[0]


def reference_up_blocks(unet, vae, scheduler, embeds, pixel_values, timestep, seed, ensemble):
    """All up-block outputs of one full UNet pass on the noised latent, per noise draw."""
    outputs = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o))
             for i, b in enumerate(unet.up_blocks)]
    with torch.inference_mode():
        latents = vae.encode(pixel_values).latent_dist.mode() * vae.config.scaling_factor
        noise = torch.randn((ensemble, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
        t = torch.full((ensemble,), timestep, dtype=torch.long)
        unet(scheduler.add_noise(latents.expand(ensemble, -1, -1, -1), noise, t), t,
             encoder_hidden_states=embeds.expand(ensemble, -1, -1))
    for h in hooks:
        h.remove()
    return latents, outputs


@pytest.mark.parametrize("up_block", [0, 1, 2])
def test_features_come_from_the_asked_up_block(tmp_path, up_block):
    unet, vae, scheduler, text_encoder = tiny_sd()
    embeds = prompt_embeds(text_encoder, tmp_path)
    bb = DiffusionBackbone("sd15", unet, vae, scheduler, embeds, timestep=261, up_block=up_block, seed=5)
    image = np.random.default_rng(0).random((30, 45)).astype(np.float32)
    assert bb.multiple == 2 * 4  # VAE halves once, the UNet twice
    fmap = bb(image)
    pv = bb.preprocess(image)
    assert tuple(pv.shape[-2:]) == (32, 48)
    latents, outs = reference_up_blocks(unet, vae, scheduler, embeds, pv, 261, 5, 1)
    np.testing.assert_allclose(fmap.data, outs[up_block][0].numpy(), rtol=1e-5, atol=1e-5)
    # up-block k ends at latent resolution / 2**(blocks - 2 - k) (the last two at latent resolution):
    # latent 16x24 -> 8x12, 16x24, 16x24 here; for SD's four blocks /4, /2, /1, /1 (DIFT's index 1: /16 pixels)
    lh, lw = latents.shape[-2:]
    factor = 2 ** max(0, len(unet.up_blocks) - 2 - up_block)
    assert fmap.grid_shape == (lh // factor, lw // factor)
    assert fmap.channels == unet.config.block_out_channels[::-1][up_block]
    # the grid covers the given image: cell size = image size / grid size
    np.testing.assert_allclose(fmap.stride, (30 / fmap.grid_shape[0], 45 / fmap.grid_shape[1]))
    np.testing.assert_allclose(fmap.offset, (fmap.stride[0] / 2 - 0.5, fmap.stride[1] / 2 - 0.5))


def test_ensemble_averages_noise_draws(tmp_path):
    unet, vae, scheduler, text_encoder = tiny_sd()
    embeds = prompt_embeds(text_encoder, tmp_path)
    image = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    bb = DiffusionBackbone("sd21", unet, vae, scheduler, embeds, timestep=100, up_block=1, ensemble=3, seed=2,
                           log_bin=True)
    fmap = bb(image)
    _, outs = reference_up_blocks(unet, vae, scheduler, embeds, bb.preprocess(image), 100, 2, 3)
    from medshot.features.logbin import log_bin

    np.testing.assert_allclose(fmap.data, log_bin(outs[1].mean(0).numpy()), rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs[1][0].numpy(), outs[1][1].numpy())  # the draws do differ


def test_sd_loads_offline_in_a_fresh_process(tmp_path):
    folder = save_tiny_sd(tmp_path / "sd", seed=1)
    image = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    code = ("import sys, numpy as np, torch\ntorch.set_num_threads(1)\n"
            "from medshot.features import get_backbone\n"
            "bb = get_backbone('sd15', weights=sys.argv[1], layer=2, timestep=50, seed=3)\n"
            "f = bb(np.load(sys.argv[2] + '/image.npy'))\n"
            "np.save(sys.argv[2] + '/sd.npy', f.data)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unet, vae, scheduler, text_encoder = tiny_sd(seed=1)
    embeds = prompt_embeds(text_encoder, tmp_path)
    expected = DiffusionBackbone("sd15", unet, vae, scheduler, embeds, timestep=50, up_block=2, seed=3)(image)
    np.testing.assert_allclose(np.load(tmp_path / "sd.npy"), expected.data, rtol=1e-5, atol=1e-5)
