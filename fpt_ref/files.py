"""Writing output files and folders safely: checked first, written atomically, never clobbered.

Every file the package writes goes through :func:`atomic_write`, every output folder that
is replaced as a whole through :func:`replace_directory`. The rules:

- an output is a regular file (or does not exist yet): devices, FIFOs, sockets and
  directories are refused before any work (:func:`check_output_file`);
- a symbolic link is followed: its target is written, the link stays a link;
- the content goes to a temporary file in the destination's folder, which is renamed over
  the destination only once it is complete (``os.replace``, atomic on POSIX); on any error
  the temporary file is removed and the destination is untouched;
- an existing file keeps its permission bits; a new file gets ``0666 & ~umask``, as
  ``open(path, "w")`` would give it;
- the same content gives the same bytes: safetensors headers are written with sorted
  keys (the library itself orders its metadata at random), ``.npz`` members with a fixed
  timestamp.

Errors are ``ValueError`` (a path that cannot be an output) or ``OSError`` (the system
refused), their messages starting with the parameter's name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, when it is not a regular file (``"a FIFO"``, ...)."""
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def check_output_file(path, name: str = "path") -> str:
    """The real path a file output will be written to; ``ValueError`` when it cannot be one.

    ``path`` may name an existing regular file (it will be replaced), a symbolic link to one
    (its target will be replaced) or a new file in an existing folder.

    >>> check_output_file("/dev/null", "out")
    Traceback (most recent call last):
    ...
    ValueError: out: /dev/null is a character device, not a regular file; refusing to write to it
    """
    raw = os.fspath(path)
    if not raw:
        raise ValueError(f"{name}: empty path")
    real = os.path.realpath(raw)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name}: {raw} is {file_kind(st.st_mode)}, not a regular file; refusing to write to it")
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise ValueError(f"{name}: folder {os.path.dirname(os.path.abspath(raw))} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: folder {folder} is not writable")
    return real


def _temporary_beside(real: str, suffix: str = ".tmp") -> str:
    folder, base = os.path.split(real)
    return os.path.join(folder, f".{base}.{secrets.token_hex(4)}{suffix}")


def atomic_write(path, write: Callable[[str], None], name: str = "path") -> str:
    """Write a file atomically: ``write(tmp)`` fills a temporary file, then it replaces ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The output (checked by :func:`check_output_file`).
    write : callable
        ``write(tmp_path)`` writes the whole content to ``tmp_path`` (a new, empty file).
    name : str
        The parameter name used in error messages.

    Returns
    -------
    str
        The real path written (a symbolic link's target).
    """
    real = check_output_file(path, name)
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = _temporary_beside(real)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies, as for open()
        os.close(fd)
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return real


def write_bytes(path, data: bytes, name: str = "path") -> str:
    """:func:`atomic_write` of ``data``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, name)


def write_text(path, text: str, name: str = "path") -> str:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"), name)


def _canonical_header(raw_header: bytes) -> bytes:
    """A safetensors header (JSON) rewritten with sorted keys, with its 8-byte length prefix."""
    header = json.loads(raw_header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` (NumPy arrays), byte-reproducible.

    The library's own header lists ``__metadata__`` in hash order, different from one run
    to the next; this rewrites the header as JSON with sorted keys, padded with spaces to a
    multiple of 8 bytes as the format asks. Data offsets are relative to the end of the
    header, so the data section is unchanged. (In memory: for files, :func:`write_safetensors`
    streams instead.)
    """
    from safetensors.numpy import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    return _canonical_header(raw[8 : 8 + n]) + raw[8 + n :]


def write_safetensors(path, tensors: dict, metadata: dict | None = None, name: str = "path") -> str:
    """Write the bytes of :func:`safetensors_bytes` atomically (:func:`atomic_write`), streaming.

    The library writes the file beside the destination; its header is rewritten and the data
    section copied in 16 MiB pieces, so no serialised copy of the tensors is held in memory.
    """
    from safetensors.numpy import save_file

    def write(tmp: str) -> None:
        raw = tmp + ".raw"
        try:
            save_file(tensors, raw, metadata=metadata)
            with open(raw, "rb") as src, open(tmp, "wb") as dst:
                (n,) = struct.unpack("<Q", src.read(8))
                dst.write(_canonical_header(src.read(n)))
                shutil.copyfileobj(src, dst, 16 * 1024**2)
        finally:
            if os.path.exists(raw):
                os.unlink(raw)

    return atomic_write(path, write, name)


def write_npz(path, arrays: dict, name: str = "path") -> str:
    """An uncompressed ``.npz`` that ``numpy.load`` reads, byte-reproducible.

    ``numpy.savez`` stamps each member with the current time; here every member carries
    the fixed date 1980-01-01 (the earliest a zip file can hold).
    """
    import numpy as np

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for key in arrays:
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arrays[key]), allow_pickle=False)

    return atomic_write(path, write, name)


@contextmanager
def replace_directory(path, is_ours: Callable[[str], bool], name: str = "out_dir") -> Iterator[str]:
    """Build a folder in a temporary sibling, then put it in place of ``path`` as a whole.

    ``with replace_directory(out, is_ours) as tmp: ...`` writes into ``tmp``; when the block
    ends without error, ``tmp`` takes the place of ``out``. ``out`` may be missing, empty, or
    a folder this package wrote before (``is_ours(out)`` true: it is replaced entirely, so no
    stale file survives); anything else is refused before any work. On error the temporary
    folder is removed and ``out`` is untouched.
    """
    raw = os.fspath(path)
    if not raw:
        raise ValueError(f"{name}: empty path")
    real = os.path.realpath(raw)
    if os.path.exists(real):
        if not os.path.isdir(real):
            raise ValueError(f"{name}: {raw} exists and is not a directory")
        if os.listdir(real) and not is_ours(real):
            raise ValueError(
                f"{name}: {raw} is not empty and does not hold an earlier output of this command; "
                "give a new or empty folder"
            )
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise ValueError(f"{name}: folder {parent} does not exist")
    tmp = _temporary_beside(real, ".partial")
    os.mkdir(tmp)  # 0777 & ~umask, as for any new folder
    old = None
    try:
        yield tmp
        if os.path.exists(real):
            old = _temporary_beside(real, ".old")
            os.rename(real, old)
        os.rename(tmp, real)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(real):
            os.rename(old, real)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


#: a safetensors header larger than this is refused before it is read (the library's own limit is 100 MB)
MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: str, size: int, bad: str, error: type = ValueError) -> tuple:
    """``(header, n)``: the JSON header object of safetensors file ``path`` (``size`` bytes) and
    its length ``n`` (the data section starts at byte ``8 + n``), reading only the header.

    A file that is not safetensors raises ``error(f"{bad} (why)")``: shorter than 8 bytes, a
    declared length over :data:`MAX_HEADER` or past the end, a header that is not a JSON object.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{bad} (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise error(f"{bad} (header of {n} bytes in a file of {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{bad} (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise error(f"{bad} (header is not a JSON object)")
    return header, n
