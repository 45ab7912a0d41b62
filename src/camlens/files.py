"""Writing results safely: every file appears whole or not at all (a temporary file in the same
folder, then an atomic rename), and an output place is checked before any work is done."""

from __future__ import annotations

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
    The parent folder is created. Errors name ``path``, never the temporary file."""
    target = Path(path)
    _make_folder(target.parent, f"cannot write {target}")
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CamlensError(f"cannot write {target} ({_reason(exc)})") from None
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
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
    output_folder(target.parent, f"{what}'s folder")
    return target


def _make_folder(folder: Path, message: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CamlensError(f"{message}: a file is in the way") from None
    except OSError as exc:
        raise CamlensError(f"{message} ({_reason(exc)})") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it
