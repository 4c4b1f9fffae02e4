"""The bottom layer: what every other medshot package may import and that imports no other medshot package.

``errors`` holds the one user-facing exception type; ``registry`` the one name -> builder mechanism
used by the backbone and segmenter catalogues.
"""
