"""ViT backbones (DINO v1, DINOv2 +registers, DINOv3, CLIP) on tiny random models: parity with the model's
own outputs and with an independent reference computation, and loading through the registry offline.

The tiny-model builders here are shared with the other ``test_backbone_*`` files.
"""

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
F = torch.nn.functional

from medshot.core.errors import WeightsNotFoundError  # noqa: E402
from medshot.features import get_backbone  # noqa: E402
from medshot.features.logbin import log_bin  # noqa: E402
from medshot.features.vit import FAMILIES, ViTBackbone, load_pretrained  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

#: family -> (medshot name whose family it is, patch size, prefix tokens, name of the block's first norm)
TINY = {
    "dino": ("dino_vits8", 8, 1, "layernorm_before"),
    "dinov2": ("dinov2_vits14", 14, 1, "norm1"),
    "dinov2_reg": ("dinov2_vits14_reg", 14, 1 + 4, "norm1"),
    "dinov3": ("dinov3_vits16", 8, 1 + 2, "norm1"),
    "clip": ("clip_vitb16", 8, 1, "layer_norm1"),
}
COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, initializer_range=0.2)


def tiny_model(family: str, seed: int = 0):
    """A randomly initialised tiny model of ``family`` (real config and model classes)."""
    torch.manual_seed(seed)
    if family == "dino":
        cfg = transformers.ViTConfig(intermediate_size=64, image_size=32, patch_size=8, **COMMON)
        return transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    if family == "dinov2":
        cfg = transformers.Dinov2Config(mlp_ratio=2, image_size=42, patch_size=14, **COMMON)
        return transformers.Dinov2Model(cfg).eval()
    if family == "dinov2_reg":
        cfg = transformers.Dinov2WithRegistersConfig(mlp_ratio=2, image_size=42, patch_size=14, num_register_tokens=4,
                                                     **COMMON)
        return transformers.Dinov2WithRegistersModel(cfg).eval()
    if family == "dinov3":
        cfg = transformers.DINOv3ViTConfig(intermediate_size=64, image_size=32, patch_size=8, num_register_tokens=2,
                                           **COMMON)
        return transformers.DINOv3ViTModel(cfg).eval()
    if family == "clip":
        cfg = transformers.CLIPVisionConfig(intermediate_size=64, image_size=32, patch_size=8, **COMMON)
        return transformers.CLIPVisionModel(cfg).eval()
    raise KeyError(family)


def save_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    """Write the tiny model with ``save_pretrained`` (safetensors), laid out as its hub checkpoint is.

    CLIP checkpoints on the hub hold the whole CLIPModel (text tower too); the vision tower is loaded out of it.
    """
    model = tiny_model(family, seed)
    if family == "clip":
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        full = transformers.CLIPModel(transformers.CLIPConfig(text_config=text,
                                                              vision_config=model.config.to_dict()))
        full.vision_model.load_state_dict(model.state_dict())
        full.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


def test_image(shape=(50, 60), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


test_image.__test__ = False  # a helper, not a test


def wrap(family: str, model, **options) -> ViTBackbone:
    return ViTBackbone(TINY[family][0], FAMILIES[family], model, **options)


def own_hidden_states(family, model, pixel_values):
    out = model(pixel_values=pixel_values, output_hidden_states=True, **dict(FAMILIES[family].forward_kwargs))
    return out.hidden_states


@pytest.mark.parametrize("family", list(TINY))
def test_token_facet_equals_hidden_states(family):
    model = tiny_model(family)
    _, patch, prefix, _ = TINY[family]
    image = test_image()
    with torch.inference_mode():
        for layer in (1, 2, None):
            bb = wrap(family, model, layer=layer)
            fmap = bb(image)
            pv = bb.preprocess(image)
            hs = own_hidden_states(family, model, pv)
            expected_layer = layer or bb.layer
            gh, gw = fmap.grid_shape
            ref = hs[expected_layer][0, prefix:].T.reshape(-1, gh, gw).numpy()
            assert ref.shape[1:] == ((pv.shape[2] - patch) // patch + 1, (pv.shape[3] - patch) // patch + 1)
            np.testing.assert_array_equal(fmap.data, ref)
    # the CLIP default is the block before the last, the others' the last
    assert wrap(family, model).layer == (2 if family == "clip" else 3)


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("facet", ["key", "query", "value"])
def test_qkv_facets_equal_manual_projection(family, facet):
    model = tiny_model(family)
    _, _, prefix, norm = TINY[family]
    image = test_image()
    layer = 2
    bb = wrap(family, model, layer=layer, facet=facet)
    fmap = bb(image)
    with torch.inference_mode():
        hs = own_hidden_states(family, model, bb.preprocess(image))
        block = bb.blocks[layer - 1]
        attn = getattr(block, FAMILIES[family].attention)
        proj = getattr(attn, facet[0] + "_proj")
        # the block's input, normalised as the block does before attention, through that projection's weights
        x = getattr(block, norm)(hs[layer - 1][0])
        ref = F.linear(x, proj.weight, proj.bias)[prefix:]
    gh, gw = fmap.grid_shape
    np.testing.assert_allclose(fmap.data, ref.T.reshape(-1, gh, gw).numpy(), rtol=1e-5, atol=1e-5)


def reference_overlapping(family, model, pixel_values, stride, layer):
    """Features at a lowered stride computed by hand: unfold + the patch projection's weights, position
    embeddings interpolated to the grid (or RoPE coordinates of the grid), then the model's blocks."""
    fam = FAMILIES[family]
    conv = model.get_submodule(fam.patch_conv)
    p = conv.kernel_size[0]
    H, W = pixel_values.shape[-2:]
    gh, gw = 1 + (H - p) // stride, 1 + (W - p) // stride
    cols = F.unfold(pixel_values, kernel_size=p, stride=stride)  # (1, 3*p*p, gh*gw)
    x = (conv.weight.reshape(conv.out_channels, -1) @ cols)[0].T  # (gh*gw, C)
    if conv.bias is not None:
        x = x + conv.bias
    x = x[None]
    emb = model.embeddings
    position_embeddings = None
    if family == "dinov3":
        regs = emb.register_tokens
        x = torch.cat([emb.cls_token, regs, x], dim=1)
        ys = (torch.arange(gh, dtype=torch.float32) + 0.5) / gh * 2 - 1
        xs = (torch.arange(gw, dtype=torch.float32) + 0.5) / gw * 2 - 1
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        inv_freq = model.rope_embeddings.inv_freq
        angles = (2 * torch.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2).tile(2)
        position_embeddings = (torch.cos(angles), torch.sin(angles))
    else:
        table = emb.position_embedding.weight[None] if family == "clip" else emb.position_embeddings
        n = int(round((table.shape[1] - 1) ** 0.5))
        grid = table[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False,
                             antialias=family == "dinov2_reg")
        pos = torch.cat([table[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        cls = emb.class_embedding[None, None] if family == "clip" else emb.cls_token
        x = torch.cat([cls, x], dim=1) + pos
        if family == "dinov2_reg":
            x = torch.cat([x[:, :1], emb.register_tokens, x[:, 1:]], dim=1)
        if family == "clip":
            x = model.pre_layrnorm(x)
    for block in model.get_submodule(fam.layers)[:layer]:
        x = block(x, None, position_embeddings=position_embeddings) if family == "dinov3" else block(x, None)
    return x[0, x.shape[1] - gh * gw:].T.reshape(-1, gh, gw), (gh, gw)


@pytest.mark.parametrize("family", list(TINY))
def test_lowered_stride_matches_reference(family):
    model = tiny_model(family)
    patch = TINY[family][1]
    stride = patch // 2
    # An image made by tiling one random patch-sized tile, already at a size the stride tiles exactly
    # (no resize), so the reference sees the same pixels.
    tile = test_image((patch, patch), seed=3)
    H, W = patch + 5 * stride, patch + 7 * stride
    image = np.tile(tile, (H // patch + 1, W // patch + 1))[:H, :W]
    bb = wrap(family, model, layer=2, stride=stride)
    fmap = bb(image)
    pv = bb.preprocess(image)
    assert tuple(pv.shape[-2:]) == (H, W)
    with torch.inference_mode():
        ref, grid = reference_overlapping(family, tiny_model(family), pv, stride, layer=2)
    assert fmap.grid_shape == grid == (1 + (H - patch) // stride, 1 + (W - patch) // stride) == (6, 8)
    assert fmap.stride == (stride, stride)
    assert fmap.offset == (patch / 2 - 0.5, patch / 2 - 0.5)  # centre of the first patch
    np.testing.assert_allclose(fmap.data, ref.numpy(), rtol=1e-4, atol=1e-5)
    # and the wrapped model still runs at other sizes (the position interpolation follows the input)
    assert bb(test_image((40, 41))).grid_shape == bb.grid_shape(bb.input_size((40, 41)))


def test_grid_maps_back_to_input_pixels():
    model = tiny_model("dinov2")
    image = test_image((50, 60))  # resized to 56 x 56 for patch 14
    bb = wrap("dinov2", model)
    fmap = bb(image)
    assert bb.input_size((50, 60)) == (56, 56) and fmap.grid_shape == (4, 4)
    assert fmap.image_shape == (50, 60)
    fy, fx = 50 / 56, 60 / 56
    np.testing.assert_allclose(fmap.stride, (14 * fy, 14 * fx))
    # cell (0, 0) covers resized pixels 0..13: its centre 6.5 maps to (6.5 + 0.5) * f - 0.5 in the input
    np.testing.assert_allclose(fmap.offset, (7 * fy - 0.5, 7 * fx - 0.5))
    # gray -> three identical channels, each normalised with the model's own mean/std
    pv = bb.preprocess(np.full((56, 56), 0.25, np.float32))
    np.testing.assert_allclose(pv[0, :, 0, 0].numpy(), (0.25 - np.array(bb.mean)) / np.array(bb.std), rtol=1e-6)
    # image_size: the longer side goes to about that many pixels, rounded to the patch grid
    assert wrap("dinov2", model, image_size=112).input_size((50, 60)) == (98, 112)


def test_log_bin_option_bins_the_grid():
    model = tiny_model("dino")
    image = test_image((40, 48))
    plain = wrap("dino", model, stride=4)(image)
    binned = wrap("dino", model, stride=4, log_bin=True)(image)
    assert binned.data.shape == (17 * plain.channels, *plain.grid_shape)
    np.testing.assert_array_equal(binned.data, log_bin(plain.data))
    assert (binned.stride, binned.offset) == (plain.stride, plain.offset)


def test_bad_options_are_user_errors():
    from medshot.core.errors import MedshotError

    model = tiny_model("dino")
    for options in ({"layer": 4}, {"layer": -4}, {"layer": 0}, {"facet": "attn"}, {"stride": 9}, {"stride": 0}):
        with pytest.raises(MedshotError):
            wrap("dino", model, **options)


def test_wrong_checkpoint_is_refused(tmp_path):
    folder = save_tiny("dinov2", tmp_path / "dinov2")
    with pytest.raises(WeightsNotFoundError, match="not a CLIPVisionModel checkpoint"):
        load_pretrained(transformers.CLIPVisionModel, str(folder), "clip_vitb16", "openai/clip-vit-base-patch16")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        get_backbone("dinov2_vits14", weights=str(tmp_path / "nowhere"))


# -- loading in a fresh process, offline --------------------------------------------------------------

LOADER = r"""
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
from medshot.core.errors import WeightsNotFoundError
from medshot.features import backbone_entries, get_backbone
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
result = {}
for key, name, options in jobs:
    try:
        fmap = get_backbone(name, **options)(np.load(out + "/image.npy"))
        np.save(f"{out}/{key}.npy", fmap.data)
        result[key] = [list(fmap.stride), list(fmap.offset), list(fmap.image_shape)]
    except WeightsNotFoundError as exc:
        result[key] = str(exc)
result["status"] = {e.name: e.available() for e in backbone_entries()}
json.dump(result, open(out + "/result.json", "w"))
"""


def run_loader(jobs, out: Path, hf_home: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "PYTHONPATH": str(REPO)}
    env.pop("MEDSHOT_ALLOW_DOWNLOAD", None)
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def fake_hf_cache(hf_home: Path, repo_id: str, files_from: Path) -> None:
    """Lay ``files_from`` out as the HF cache does after ``hf download repo_id``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files_from.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_each_family_loads_offline_in_a_fresh_process(tmp_path):
    image = test_image((48, 56))
    np.save(tmp_path / "image.npy", image)
    hf_home = tmp_path / "hf"
    jobs, expected = [], {}
    for family, (name, *_rest) in TINY.items():
        folder = save_tiny(family, tmp_path / family, seed=1)
        options = {"weights": str(folder), "layer": 2, "facet": "key"}
        jobs.append([family, name, options])
        # the same features computed here from the in-memory model the folder was written from
        expected[family] = wrap(family, tiny_model(family, seed=1), layer=2, facet="key")(image)
    # a checkpoint in the HF cache, found by hub id with no --weights, as a user's download is
    fake_hf_cache(hf_home, "facebook/dinov2-small", tmp_path / "dinov2")
    jobs.append(["cached", "dinov2_vits14", {"stride": 7, "log_bin": True}])
    expected["cached"] = wrap("dinov2", tiny_model("dinov2", seed=1), stride=7, log_bin=True)(image)
    jobs.append(["missing", "dinov2_vitb14", {}])

    result = run_loader(jobs, tmp_path, hf_home)
    for key, fmap in expected.items():
        got = np.load(tmp_path / f"{key}.npy")
        np.testing.assert_allclose(got, fmap.data, rtol=1e-5, atol=1e-6, err_msg=key)
        assert result[key] == [list(fmap.stride), list(fmap.offset), list(fmap.image_shape)]
    message = result["missing"]
    for needed in ("facebook/dinov2-base", "hf download", "--weights", "classical", "offline"):
        assert needed in message
    status = result["status"]
    assert status["dinov2_vits14"][0] is True and "HF cache" in status["dinov2_vits14"][1]
    assert status["dinov2_vitb14"][0] is False and "facebook/dinov2-base" in status["dinov2_vitb14"][1]


def test_registry_imports_without_torch():
    # torch made unimportable: every name is still listed, and says what it needs
    code = ("import sys; sys.modules['torch'] = None\n"
            "from medshot.features import backbone_entries, get_backbone\n"
            "from medshot.core.errors import MedshotError\n"
            "status = {e.name: e.available() for e in backbone_entries()}\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "for name in ('dino_vits8', 'dinov2_vitg14_reg', 'dinov3_vitb16', 'clip_vitl14', 'sd21'):\n"
            "    assert status[name][0] is False and 'pip install' in status[name][1], status[name]\n"
            "try:\n    get_backbone('dinov2_vits14')\nexcept MedshotError as exc:\n    print('ERR', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR" in proc.stdout and "medshot[torch]" in proc.stdout
