"""Stable Diffusion features, DIFT-style (Tang et al., "Emergent Correspondence from Image Diffusion", 2023).

The image is encoded to its VAE latent, noised to a chosen timestep, and passed once through the UNet
with an (empty by default) prompt; the output of one UNet up-block is the feature map. Averaging over
several noise draws (``ensemble``) lowers the noise in the features. The forward stops after the
up-block read, so the rest of the UNet costs nothing.

Needs ``diffusers`` (``pip install medshot[sd]``); this module imports torch and diffusers.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import MedshotError, WeightsNotFoundError
from ..models.weights import resolve_weights
from .base import FeatureMap
from .logbin import log_bin as log_bin_grid
from .vit import model_input_size, to_model_input, torch_dtype


class _StopForward(Exception):
    """Raised by the up-block hook: the rest of the UNet is not needed."""


class DiffusionBackbone:
    """DIFT features of a Stable Diffusion UNet up-block.

    Parameters
    ----------
    name : str
    unet, vae, scheduler
        ``UNet2DConditionModel``, ``AutoencoderKL`` and a scheduler with ``add_noise`` (DDPM).
    prompt_embeds : torch.Tensor, shape (1, tokens, D)
        Text-encoder output for the prompt (computed once at load time).
    timestep : int
        Noise level in ``[0, num_train_timesteps)``; DIFT uses 261 for SD 2.1 semantic matching.
    up_block : int
        Index of the UNet up-block whose output is read (0 = coarsest).
    ensemble : int
        Noise draws averaged (one batched UNet pass).
    image_size : int or (int, int), optional
        Model input size (longer side, or ``(H, W)``), rounded to the UNet's multiple (64 for SD);
        default about the given size.
    seed : int
        Seed of the noise draws, so that template and targets see the same noise.
    log_bin : bool
        Return 17x-wider log-binned descriptors.
    """

    def __init__(self, name: str, unet, vae, scheduler, prompt_embeds: torch.Tensor, timestep: int = 261,
                 up_block: int = 1, ensemble: int = 1, image_size=None, seed: int = 0, log_bin: bool = False):
        self.name = name
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.prompt_embeds = prompt_embeds
        n_steps = int(scheduler.config.num_train_timesteps)
        if not 0 <= int(timestep) < n_steps:
            raise MedshotError(f"timestep must be 0..{n_steps - 1}, got {timestep}")
        self.timestep = int(timestep)
        n_up = len(unet.up_blocks)
        if not 0 <= int(up_block) < n_up:
            raise MedshotError(f"up_block must be 0..{n_up - 1} for '{name}', got {up_block}")
        self.up_block = int(up_block)
        if int(ensemble) < 1:
            raise MedshotError(f"ensemble must be at least 1, got {ensemble}")
        self.ensemble = int(ensemble)
        self.image_size = image_size
        self.seed = int(seed)
        self.log_bin = bool(log_bin)
        # The VAE halves the size per extra block, the UNet per down-block but the last.
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.multiple = vae_factor * 2 ** (len(unet.config.down_block_types) - 1)

    def input_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        return model_input_size(shape, self.multiple, self.multiple, self.image_size)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(1, 3, H', W')`` in [-1, 1], the range the VAE was trained on."""
        t = to_model_input(image, self.input_size(np.shape(image)[:2]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        p = next(self.unet.parameters())
        return t.expand(-1, 3, -1, -1).to(device=p.device, dtype=p.dtype)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(C, h, w)`` up-block output for one preprocessed image, averaged over the noise draws."""
        block = self.unet.up_blocks[self.up_block]
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        with torch.inference_mode():
            latents = self.vae.encode(pixel_values).latent_dist.mode() * self.vae.config.scaling_factor
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            noise = torch.randn((self.ensemble, *latents.shape[1:]), generator=generator, dtype=torch.float32)
            noise = noise.to(device=latents.device, dtype=latents.dtype)
            t = torch.tensor([self.timestep] * self.ensemble, device=latents.device, dtype=torch.long)
            noisy = self.scheduler.add_noise(latents.expand(self.ensemble, -1, -1, -1), noise, t)
            embeds = self.prompt_embeds.to(device=latents.device, dtype=latents.dtype)
            handle = block.register_forward_hook(hook)
            try:
                self.unet(noisy, t, encoder_hidden_states=embeds.expand(self.ensemble, -1, -1))
            except _StopForward:
                pass
            finally:
                handle.remove()
            return captured[0].float().mean(dim=0)

    def __call__(self, image: np.ndarray) -> FeatureMap:
        H, W = np.shape(image)[:2]
        pixel_values = self.preprocess(image)
        data = self.features(pixel_values).contiguous().cpu().numpy()
        h, w = data.shape[1:]
        if self.log_bin:
            data = log_bin_grid(data)
        # Each cell summarises a (Hp/h)-pixel square of the resized input, i.e. an (H/h)-pixel one of the given
        # image; its centre is half a cell in.
        sy, sx = H / h, W / w
        return FeatureMap(data, (sy, sx), (sy / 2 - 0.5, sx / 2 - 0.5), (int(H), int(W)))


def load_diffusion(name: str, repo_id: str, weights=None, timestep: int = 261, up_block: int = 1,
                   ensemble: int = 1, prompt: str = "", image_size=None, seed: int = 0, log_bin: bool = False,
                   device=None, dtype=None) -> DiffusionBackbone:
    """Load the VAE, UNet, scheduler and text encoder of a diffusers Stable Diffusion folder.

    ``weights`` is a ``save_pretrained`` pipeline folder (with ``unet/``, ``vae/``, ``scheduler/``,
    ``text_encoder/`` and ``tokenizer/``) or a hub id in the local cache.
    """
    try:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as exc:
        raise MedshotError(f"backbone '{name}' needs diffusers and transformers ({exc}): "
                           f"pip install 'medshot[sd]'") from exc
    source = resolve_weights(name, repo_id, weights)
    kwargs = {}
    dt = torch_dtype(dtype)
    if dt is not None:
        kwargs["torch_dtype"] = dt
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs).eval()
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs).eval()
        # DIFT noises with the training (DDPM) schedule whatever sampler the pipeline ships with.
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder").eval()
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"could not load '{name}' from {source}: {exc} (expected a diffusers "
                                   f"Stable Diffusion folder such as the '{repo_id}' checkpoint)") from exc
    with torch.inference_mode():
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        prompt_embeds = text_encoder(ids)[0]
    del text_encoder  # only needed once: the prompt is fixed for the backbone's lifetime
    if device is not None:
        unet.to(device)
        vae.to(device)
    return DiffusionBackbone(name, unet, vae, scheduler, prompt_embeds, timestep=timestep, up_block=up_block,
                             ensemble=ensemble, image_size=image_size, seed=seed, log_bin=log_bin)
