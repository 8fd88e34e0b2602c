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
  folder it makes. Any other folder is an error naming it, ``--force``
  included: ``--force`` (where a command has it) only lets a run replace a
  folder an earlier run marked.
- No output may equal, be an ancestor of, or lie inside any input (data
  and config files, models, reference models, adapters, checkpoints: every
  path a command reads, which it passes as ``inputs``); nor may it be or
  contain the current folder, ``/`` or the home folder. Paths are compared resolved (symbolic links followed)
  and by identity (``st_dev``/``st_ino``), so a hard link or a second mount
  of an input is the input.
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


def check_output(path: PathLike, *, folder: bool, inputs: Iterable[Optional[PathLike]] = (),
                 force: Optional[bool] = None) -> Path:
    """Refuse an output path that would replace what the program did not create, or touch an input.

    See the module doc. ``inputs``: every path the command reads (None
    entries are skipped). ``force``: None for a command without ``--force``,
    else its value.
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
    refuse_overlap(path, inputs)
    if not path.exists():
        return path
    if not folder:
        if path.is_dir():
            raise DpoPluginsError(f"{path}: is a folder; give a file name for this output")
        return path
    if not path.is_dir():
        raise DpoPluginsError(f"{path}: is a file; this output is a folder: give another path")
    if any(path.iterdir()) and not is_marked(path):
        raise DpoPluginsError(f"{path}: exists and was not written by dpo-plugins (no {OUTPUT_MARKER} in it); "
                              "nothing was changed: give another output path"
                              + (" (--force only replaces a folder dpo-plugins wrote)" if force is not None else ""))
    return path


def is_marked(folder: PathLike) -> bool:
    """Whether ``folder`` carries :data:`OUTPUT_MARKER`: an earlier run's output, which a run may replace."""
    marker = Path(folder) / OUTPUT_MARKER
    return marker.is_file() and not marker.is_symlink()


def marked_by(folder: PathLike) -> Optional[str]:
    """The command whose output ``folder`` is (as :func:`mark` wrote it), or None when unmarked."""
    if not is_marked(folder):
        return None
    try:
        text = (Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    found = re.match(r"written by `([^`]*)`", text)
    return found.group(1) if found else ""


def refuse_overlap(output: PathLike, inputs: Iterable[Optional[PathLike]]) -> None:
    """Raise if ``output`` is, contains or lies inside an input, or is or contains a folder no output may replace."""
    output = Path(output)
    places = {Path.cwd(): "the current folder", Path("/"): "the root folder", Path.home(): "the home folder"}
    for place, name in places.items():
        if _covers(output, place):
            what = f"is {name}" if _same(output, place) else f"contains {name} ({place.resolve()})"
            raise DpoPluginsError(f"{output}: {what}; an output folder must be a folder of its own")
    for source in inputs:
        if source is None or str(source) == "":
            continue
        source = Path(source)
        if _covers(output, source):
            what = "is the input" if _same(output, source) else "contains the input"
        elif source.is_dir() and _covers(source, output):
            what = "is inside the input folder"  # it could replace a file of it (a model's config.json)
        else:
            continue
        raise DpoPluginsError(f"{output}: {what} {source}; an output must never touch an input: "
                              "give another output path")


def _same(a: Path, b: Path) -> bool:
    return (_identity(a) is not None and _identity(a) == _identity(b)) or a.resolve() == b.resolve()


def _covers(output: Path, source: Path) -> bool:
    """Whether ``output`` is ``source`` or one of its ancestors: by path (as written, then resolved) or by inode."""
    written, resolved = Path(os.path.abspath(source)), source.resolve()
    out_written, out_resolved = Path(os.path.abspath(output)), output.resolve()
    for candidate in (written, resolved):
        if out_written in (candidate, *candidate.parents) or out_resolved in (candidate, *candidate.parents):
            return True
    identity = _identity(output)
    if identity is None:
        return False
    return any(_identity(place) == identity for place in (resolved, *resolved.parents))


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def mark(folder: PathLike, command: str) -> None:
    """Leave :data:`OUTPUT_MARKER` in an output folder, so a later run may replace it."""
    (Path(folder) / OUTPUT_MARKER).write_text(f"written by `{command}`; a later run may replace this folder\n",
                                              encoding="utf-8")


def reclaim(folder: PathLike, keep: Iterable[str] = ()) -> None:
    """Empty a folder an earlier run marked (all but the names in ``keep``), so a new run owns it wholly.

    No stale file of the earlier run (a generations file, a checkpoint) can
    then be read as this run's. An unmarked or missing folder is left as it is.
    """
    folder = Path(folder)
    if not folder.is_dir() or not is_marked(folder):
        return
    kept = {OUTPUT_MARKER, *keep}
    for entry in folder.iterdir():
        if entry.name not in kept:
            discard(entry)


def claim_folder(path: PathLike, command: str, *, inputs: Iterable[PathLike] = (), empty: bool = False) -> Path:
    """Check ``path`` as a folder output, create it and mark it; with ``empty``, clear an earlier run's output."""
    path = check_output(path, folder=True, inputs=inputs)
    if empty and path.exists() and any(path.iterdir()):
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
