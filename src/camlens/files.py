"""Writing results safely: every file appears whole or not at all (a temporary file in the same
folder, then an atomic rename), and an output place is checked before any work is done."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from camlens.errors import CamlensError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on a clean exit it is renamed to ``path``
    (replacing any file there at once), on an error it is removed and ``path`` is left as it was.
    The parent folder is created. Errors name ``path``, never the temporary file: an ``OSError``
    while writing becomes a :class:`~camlens.errors.CamlensError`."""
    target = Path(path)
    _make_folder(target.parent, f"cannot write {target}")
    try:
        handle, name = tempfile.mkstemp(
            prefix=f".{_short(target.name)}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise CamlensError(f"cannot write {target} ({_reason(exc)})") from None
    os.close(handle)
    temp = Path(name)
    try:
        try:
            yield temp
        except OSError as exc:  # the disk full while writing, say: one line naming the target
            raise CamlensError(f"cannot write {target} ({_reason(exc)})") from None
        try:
            os.chmod(temp, 0o666 & ~_UMASK)
            os.replace(temp, target)
        except OSError as exc:
            raise CamlensError(f"cannot write {target} ({_reason(exc)})") from None
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[str]]:
    """``open(path, mode)`` (text) written through :func:`atomic_path`."""
    with atomic_path(path) as temp, open(temp, mode, encoding="utf-8") as handle:
        yield handle


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """``write(temporary_path)``, then the temporary file renamed to ``path``; returns ``path``."""
    with atomic_path(path) as temp:
        write(temp)
    return Path(path)


def output_folder(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a folder results can be written into, created if missing: a
    :class:`~camlens.errors.CamlensError` naming ``what`` when it is a file, cannot be created or
    is not writable (checked by writing a file into it), before any work is done."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CamlensError(f"{what} {folder} is a file, not a folder")
    _make_folder(folder, f"{what} {folder} cannot be created")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CamlensError(f"{what} {folder} is not writable ({_reason(exc)})") from None
    return folder


def output_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a file that can be written (its folder checked as by :func:`output_folder`):
    a :class:`~camlens.errors.CamlensError` naming ``what`` when it is a folder or cannot be
    written."""
    target = Path(path)
    if target.is_dir():
        raise CamlensError(f"{what} {target} is a folder, not a file")
    try:
        output_folder(target.parent, "its folder")
    except CamlensError as exc:
        raise CamlensError(f"{what} {target} cannot be written: {exc}") from None
    return target


def _make_folder(folder: Path, message: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CamlensError(f"{message}: a file is in the way") from None
    except OSError as exc:
        raise CamlensError(f"{message} ({_reason(exc)})") from None


NAME_MAX = 255
"""The longest file name, in bytes, that common file systems take."""


def fit_stem(stem: str, suffix: str) -> str:
    """``stem``, or when ``stem + suffix`` would be a longer file name than :data:`NAME_MAX`
    bytes, its beginning with ``~`` and 8 hex digits of its hash (so two long stems that begin
    alike stay apart), as long as fits: the outputs of an input with a long name can be written.
    """
    if len((stem + suffix).encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return stem
    tag = "~" + hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    room = NAME_MAX - len((tag + suffix).encode("utf-8", "surrogateescape"))
    return _short(stem, max(room, 1)) + tag


def _short(name: str, limit: int = 96) -> str:
    """``name`` cut to at most ``limit`` bytes in UTF-8 (whole characters), so that a temporary
    name made from it stays within the 255 bytes a file name may have."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it
