"""Volumes: one annotated 3D image -> landmarks and label maps in other CT/MR volumes."""
