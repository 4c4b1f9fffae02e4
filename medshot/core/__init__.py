"""The bottom layer: what every other medshot package may import and that imports no other medshot package.

``errors``: the one user-facing exception type; ``registry``: the one name -> builder mechanism of
the backbone and segmenter catalogues; ``geometry``: affines, grids, resampling, PCA for arrays of
any dimension; ``intensity``: windows and percentiles to [0, 1]; ``labels``: label choice, prompt
sampling, Dice; ``feature_map``: the dense feature map every backbone returns.
"""
