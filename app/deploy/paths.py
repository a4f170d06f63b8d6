"""Model paths a deployment may use: only files inside `model.deploy.models_dir`, symlinks resolved."""

from __future__ import annotations

from pathlib import Path

from app.deploy.errors import ModelPathError


def confine_model_path(path: str, models_dir: str | Path) -> Path:
    """Resolve a requested model path, relative to or inside the models directory.

    Symlinks are resolved before the check, so a link inside the directory that points outside is refused.

    Args:
        path: As the client sent it: relative to `models_dir`, or absolute inside it.
        models_dir: `model.deploy.models_dir`.

    Returns:
        The resolved absolute path of an existing regular file inside `models_dir`.

    Raises:
        ModelPathError: Empty, outside the directory (`..`, an absolute path elsewhere, a symlink out), missing,
            or not a regular file.
    """
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise ModelPathError("path must be a non-empty file name under model.deploy.models_dir")
    root = Path(models_dir).expanduser().resolve()
    requested = Path(path.strip()).expanduser()
    candidate = (requested if requested.is_absolute() else root / requested).resolve()
    if not candidate.is_relative_to(root):
        raise ModelPathError(f"{path!r} is outside the models directory (model.deploy.models_dir={root})")
    if not candidate.exists():
        raise ModelPathError(f"{path!r}: no such file in the models directory ({root})")
    if not candidate.is_file():
        raise ModelPathError(f"{path!r} is not a file")
    return candidate
