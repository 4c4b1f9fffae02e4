"""Where model weights come from: a local ``save_pretrained`` folder or the Hugging Face cache.

medshot never downloads on its own initiative in tests; users who want a download run
``hf download <repo>`` (or let ``from_pretrained`` fetch with network access, when
``HF_HUB_OFFLINE`` is not set). Every failure becomes a :class:`~medshot.core.errors.WeightsNotFoundError`
that names the checkpoint, how to get it, and that the weights-free backend works offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import WeightsNotFoundError


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def missing_weights_message(name: str, repo_id: str, extra: str = "") -> str:
    """The one-line "weights not found" message: checkpoint, how to get it, the offline fallback.

    Parameters
    ----------
    name : str
        medshot's name for the model.
    repo_id : str
        Its Hugging Face checkpoint.
    extra : str
        Inserted after the ``--weights DIR`` hint (e.g. other accepted files).
    """
    return (
        f"weights for '{name}' not found (needs Hugging Face checkpoint '{repo_id}'). Get them with "
        f"`hf download {repo_id}` on a machine with network access (they land in the HF cache, "
        f"HF_HOME), or pass --weights DIR pointing at a save_pretrained folder{extra}. The weights-free "
        f"backend (--backbone classical / --segmenter classical) works offline."
    )


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the HF cache, or None. Never touches the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return None


def resolve_weights(name: str, repo_id: str, weights: str | os.PathLike | None = None) -> str:
    """Return what to hand to ``from_pretrained``: a local folder, or the hub id when it is cached.

    Parameters
    ----------
    name : str
        medshot's name for the model (for messages).
    repo_id : str
        Default Hugging Face repository id.
    weights : path or hub id, optional
        A ``save_pretrained`` folder, a file (for formats that take one), or another hub id.
    """
    if weights is not None:
        p = Path(weights)
        if p.exists():
            return str(p)
        if "/" in str(weights) and not str(weights).startswith((".", "/")):
            repo_id = str(weights)
        else:
            raise WeightsNotFoundError(f"weights path does not exist ({missing_weights_message(name, repo_id)})",
                                       weights)
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return str(snapshot)
    if not offline() and os.environ.get("MEDSHOT_ALLOW_DOWNLOAD", "") == "1":
        return repo_id
    raise WeightsNotFoundError(missing_weights_message(name, repo_id))


def weights_present(repo_id: str, weights: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(present, where) without loading anything: for `medshot backbones`."""
    if weights is not None and Path(weights).exists():
        return True, str(weights)
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return True, f"HF cache ({snapshot})"
    return False, f"not in HF cache: {repo_id}"
