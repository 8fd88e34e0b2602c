"""The one place outputs are written: build beside the target, then rename into place.

Every file or folder the project writes for a user (converted data, reports,
merged and trained models, cache entries) is first built under a temporary
sibling name (``.NAME.partial-XXXX``) in the target's own folder, so the
final ``os.replace`` is a rename on one file system: a reader sees the old
output or the complete new one, never half of one. On any exception,
interrupt included, the temporary sibling is removed and the target is left
as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from .errors import DpoPluginsError

PathLike = Union[str, Path]


def staging_folder(target: PathLike) -> Path:
    """A new empty temporary folder beside ``target`` (its parent is created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def publish(built: PathLike, target: PathLike) -> None:
    """Rename ``built`` (a file or a folder) onto ``target``.

    An existing file is replaced atomically; an existing folder is first
    renamed aside, so the swap never leaves ``target`` missing for long and
    the old folder is removed only once the new one is in place.
    """
    built, target = Path(built), Path(target)
    if target.is_dir() and not target.is_symlink():
        retired = staging_folder(target)
        os.replace(target, retired / target.name)
        os.replace(built, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(built, target)


def discard(temporary: PathLike) -> None:
    """Remove a temporary file or folder made here; missing is fine."""
    temporary = Path(temporary)
    if temporary.is_dir() and not temporary.is_symlink():
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target``.

    An existing non-empty ``target`` is an error unless ``replace``.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not replace:
        raise DpoPluginsError(f"{target} already exists and is not empty (remove it, or use --force)")
    building = staging_folder(target)
    try:
        yield building
        publish(building, target)
    except BaseException:
        discard(building)
        raise


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        discard(temporary)
        raise


def fresh_marked_folder(path: PathLike, marker: str, owner: str) -> Path:
    """An empty folder ``path`` carrying the file ``marker``, for a command (``owner``) that fills it in place.

    A folder that already has content is emptied only if it carries
    ``marker``, i.e. an earlier run of the same command made it; anything
    else is an error and is left untouched.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not (path / marker).exists():
            raise DpoPluginsError(f"{path} exists and is not an earlier {owner}'s output; choose another --output")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / marker).write_text(f"written by `{owner}`; the next {owner} run replaces this folder\n")
    return path


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
