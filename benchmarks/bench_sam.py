"""CPU seconds per target of the SAM segmenter: image encoder, prompt encoder + mask decoder, and medshot's share.

Full-size architectures with random weights (no download; random weights run at real speed). For each
variant, one target (a synthetic phantom of ``--size`` pixels with its two labels, five positive and four
negative points each, the coarse mask as box source) goes through :meth:`SamSegmenter.segment` with the
embedding cache emptied first, and the time is split by forward hooks into

* ``encoder``: the SAM image encoder's forward (``vision_encoder``), once per target;
* ``decoder``: prompt encoder + mask decoder forwards, summed over labels (and iterations);
* ``medshot``: everything else inside ``segment``: preprocessing (gray -> RGB, normalise, resize, pad),
  coordinate transforms, mask prompts, upsampling masks to full resolution, choosing among the
  candidates, overlap resolution; reported in seconds and as a share of the total.

Usage::

    python benchmarks/bench_sam.py --quick            # sam_vit_b, slimsam_50, slimsam_77: ~1-2 min on 2 idle cores
    python benchmarks/bench_sam.py --repeats 3        # all five architectures (vit_h needs ~3 GB)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Encoder widths of the released checkpoints (prompt encoder and mask decoder are the same for all).
ARCHITECTURES = {
    "sam_vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "sam_vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      global_attn_indexes=[5, 11, 17, 23]),
    "sam_vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                      global_attn_indexes=[7, 15, 23, 31]),
    "slimsam_50": dict(hidden_size=384, mlp_dim=1536, num_hidden_layers=12, num_attention_heads=12,
                       global_attn_indexes=[2, 5, 8, 11]),
    "slimsam_77": dict(hidden_size=168, mlp_dim=696, num_hidden_layers=12, num_attention_heads=12,
                       global_attn_indexes=[2, 5, 8, 11]),
}
QUICK = ("sam_vit_b", "slimsam_50", "slimsam_77")


def full_size_model(name: str):
    """A ``SamModel`` with the real architecture of ``name`` and random weights (no initialisation cost)."""
    import torch
    from transformers import SamConfig, SamModel, SamVisionConfig

    with torch.device("meta"):
        model = SamModel(SamConfig(vision_config=SamVisionConfig(**ARCHITECTURES[name])))
    model = model.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            # Ordinary magnitudes everywhere (uninitialised memory could hold denormals or NaNs that time oddly).
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


class _Timer:
    """Wall seconds spent inside the forwards of some modules (pre/post hooks)."""

    def __init__(self, modules):
        self.seconds = 0.0
        self.calls = 0
        for m in modules:
            m.register_forward_pre_hook(self._start)
            m.register_forward_hook(self._stop)

    def _start(self, *args):
        self._t0 = time.perf_counter()

    def _stop(self, *args):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def target_case(size: int):
    """A phantom image and its per-label prompts, as OneShot would hand them to the segmenter."""
    from medshot.core.labels import sample_prompts
    from medshot.segment import Prompt
    from medshot.synthetic import make_phantom

    case = make_phantom((size, size))
    prompts = []
    for label in (1, 2):
        region = case.mask == label
        positive, negative = sample_prompts(region, 5, 4)
        prompts.append(Prompt(label, positive, negative, mask=region))
    return case.image, prompts


def bench(name: str, size: int, repeats: int, warmup: int, options: dict, dtype: str = "float32") -> dict:
    import torch

    from medshot.models import sam as samodel
    from medshot.segment import sam as samseg

    t0 = time.perf_counter()
    model = full_size_model(name).to(getattr(torch, dtype))
    build = time.perf_counter() - t0
    seg = samseg.SamSegmenter.from_model(model, name=name, **options)
    encoder = _Timer([model.vision_encoder])
    decoder = _Timer([model.prompt_encoder, model.mask_decoder])
    image, prompts = target_case(size)
    rows = []
    for i in range(warmup + repeats):
        samodel._EMBEDDINGS.clear()  # every repeat is a new target: the encoder must run
        encoder.reset()
        decoder.reset()
        w0, c0 = time.perf_counter(), time.process_time()
        seg.segment(image, prompts)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if i >= warmup:
            rows.append((wall, cpu, encoder.seconds, decoder.seconds, decoder.calls))
    wall, cpu, enc, dec, calls = (statistics.median(c) for c in zip(*rows))
    own = max(0.0, wall - enc - dec)
    return {"variant": name, "encoder_params_m": sum(p.numel() for p in model.vision_encoder.parameters()) / 1e6,
            "build_s": build, "total_s": wall, "cpu_s": cpu, "encoder_s": enc, "decoder_s": dec,
            "decoder_calls": int(calls), "medshot_s": own, "medshot_share": own / wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(ARCHITECTURES), default=None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, one timed pass each")
    parser.add_argument("--size", type=int, default=512, help="target side in pixels (default 512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed targets per variant (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed targets first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--iterate", action="store_true", help="second decoder pass per label")
    parser.add_argument("--mask-prompt", action="store_true", help="coarse mask as mask prompt")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    variants = args.variants or (list(QUICK) if args.quick else list(ARCHITECTURES))
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    options = {"iterate": args.iterate, "use_mask_prompt": args.mask_prompt}
    print(f"# SAM segmenter, {args.size}x{args.size} target, 2 labels x (5+, 4-) points + box, "
          f"{'iterate, ' if args.iterate else ''}{'mask prompt, ' if args.mask_prompt else ''}"
          f"{args.dtype}, {args.threads} threads, torch {torch.__version__}, median of {repeats} "
          f"(+{warmup} warm-up)")
    print("| variant | encoder params (M) | total s | CPU s | encoder s | decoder s (calls) | medshot s | "
          "medshot share |")
    print("|---|---|---|---|---|---|---|---|")
    for name in variants:
        r = bench(name, args.size, repeats, warmup, options, args.dtype)
        print(f"| {r['variant']} | {r['encoder_params_m']:.1f} | {r['total_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['encoder_s']:.2f} | {r['decoder_s']:.3f} ({r['decoder_calls']}) | {r['medshot_s']:.3f} | "
              f"{100 * r['medshot_share']:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
