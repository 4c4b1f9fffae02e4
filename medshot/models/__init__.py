"""Model weights and loaders shared by the feature backbones and the segmenters.

``weights`` finds checkpoints (``--weights DIR``, the Hugging Face cache, offline mode) and words the
missing-weights message; ``sam`` holds the Segment Anything catalogue, loader and embedding cache (the
SAM backbone and the SAM segmenter share one encoder pass through it); ``checkpoints`` reads official
SAM ``.pth`` files into transformers models. Nothing here imports torch at import time.
"""
