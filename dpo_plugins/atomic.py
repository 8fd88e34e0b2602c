"""The one place outputs are written, and the rule that keeps users' files safe.

**Atomic writes.** Every file or folder the project writes for a user
(converted data, reports, merged and trained models, cache entries) is first
built under a temporary sibling name (``.NAME.partial-PID-XXXX``) in the
target's own folder, so the final ``os.replace`` is a rename on one file
system: a reader sees the old output or the complete new one, never half of
one. On any exception, interrupt included, the temporary sibling is removed
and the target is left as it was. A run killed outright (SIGKILL, power
loss) cannot clean up; the next run on the same host that writes the same
target removes the temporary siblings whose process is gone. A sibling's
name carries its host (``.NAME.partial-PID@HOST-XXXX``), so on a folder
shared by several nodes (a cache on NFS) no run removes another node's
sibling that is still being written: its PID means nothing here.

**The output-safety rule** (:func:`check_output`, called by every command
before its long work starts): the program never deletes or replaces what it
did not create.

- An existing *file* may be replaced (atomically) by a file output.
- An existing *folder* is replaced, or written into, only if it is empty or
  carries :data:`OUTPUT_MARKER`, the file the program leaves in every output
  folder it makes. Any other folder is an error naming it; ``--force``
  (where a command has it) lifts this, but never for the current folder,
  ``/``, the home folder, or a folder that contains one of the inputs.
- A file where a folder is wanted (or the reverse), a symbolic link, or a
  parent that is not a writable folder is an error before any work.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .errors import DpoPluginsError

PathLike = Union[str, Path]
OUTPUT_MARKER = ".dpo-plugins-output"


# -- the output-safety rule ------------------------------------------------------


def check_output(path: PathLike, *, folder: bool, inputs: Iterable[PathLike] = (), force: Optional[bool] = None) -> Path:
    """Refuse an output path that would replace what the program did not create (see the module doc).

    ``force``: None for a command without ``--force``, else its value.
    """
    path = Path(path)
    if path.is_symlink():
        raise DpoPluginsError(f"{path}: is a symbolic link; give the path it points to")
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise DpoPluginsError(f"{path}: cannot write here: {parent} is a file, not a folder")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise DpoPluginsError(f"{path}: cannot write here: {existing} is not writable")
    if not path.exists():
        return path
    if not folder:
        if path.is_dir():
            raise DpoPluginsError(f"{path}: is a folder; give a file name for this output")
        return path
    if not path.is_dir():
        raise DpoPluginsError(f"{path}: is a file; this output is a folder: give another path")
    _refuse_protected(path, inputs)
    if any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file() and not force:
        raise DpoPluginsError(f"{path}: exists and was not written by dpo-plugins (no {OUTPUT_MARKER} in it); "
                              "nothing was changed: give another output path" + (" (or --force)" if force is False else ""))
    return path


def _refuse_protected(path: Path, inputs: Iterable[PathLike]) -> None:
    resolved = path.resolve()
    protected = {Path.cwd().resolve(): "the current folder", Path("/").resolve(): "the root folder",
                 Path.home().resolve(): "the home folder"}
    if resolved in protected:
        raise DpoPluginsError(f"{path}: is {protected[resolved]}; an output folder must be a folder of its own")
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise DpoPluginsError(f"{path}: contains the input {source}; give another output folder")


def mark(folder: PathLike, command: str) -> None:
    """Leave :data:`OUTPUT_MARKER` in an output folder, so a later run may replace it."""
    (Path(folder) / OUTPUT_MARKER).write_text(f"written by `{command}`; a later run may replace this folder\n",
                                              encoding="utf-8")


def claim_folder(path: PathLike, command: str, *, inputs: Iterable[PathLike] = (), empty: bool = False) -> Path:
    """Check ``path`` as a folder output, create it and mark it; with ``empty``, clear an earlier run's output."""
    path = check_output(path, folder=True, inputs=inputs)
    if empty and path.exists():
        shutil.rmtree(path)  # empty or marked: check_output allowed it
    path.mkdir(parents=True, exist_ok=True)
    mark(path, command)
    return path


# -- atomic writes -----------------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-{os.getpid()}@{_host()}-"


def _remove_stale_partials(target: Path) -> None:
    """Remove temporary siblings of ``target`` left by this host's runs that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.partial-(\d+)(?:@([^-]+))?-")
    if not target.parent.is_dir():
        return
    for sibling in target.parent.iterdir():
        found = pattern.match(sibling.name)
        if found and found.group(2) in (None, _host()) and not _alive(int(found.group(1))):
            discard(sibling)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def staging_folder(target: PathLike) -> Path:
    """A new empty temporary folder beside ``target`` (its parent is created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    return Path(tempfile.mkdtemp(prefix=_partial_prefix(target), dir=target.parent))


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
def atomic_directory(target: PathLike, *, replace: bool = False, command: str = "") -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target``, marked as ``command``'s output.

    An existing non-empty ``target`` is an error unless ``replace``.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not replace:
        raise DpoPluginsError(f"{target} already exists and is not empty (remove it, or use --force)")
    building = staging_folder(target)
    try:
        yield building
        if command:
            mark(building, command)
        publish(building, target)
    except BaseException:
        discard(building)
        raise


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    handle, temporary = tempfile.mkstemp(prefix=_partial_prefix(path), dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        discard(temporary)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
