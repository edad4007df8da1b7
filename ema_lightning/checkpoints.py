"""Checkpoint files: read untrusted ones without running their code, write them so a failure leaves none half-written.

Reading. `load_checkpoint_file(path)` is the one way the package reads a checkpoint a user names
(`extract --checkpoint`; `AtomicCheckpointIO.load_checkpoint` for `fit/validate/test --ckpt_path`):
`torch.load(weights_only=True)` only, so a pickle that asks for `os.system` is refused, not run. Any
problem (missing, a folder, empty, truncated, random bytes, Python objects, no `state_dict`) is one
`CheckpointError` whose message starts with the path. `check_checkpoint(path)` runs the same checks on
a `--ckpt_path` before the model is built (it also accepts Lightning's "last"/"best"/"hpc"/"registry",
remote URLs, and a sharded checkpoint folder holding `meta.pt`). The project's own checkpoints load
this way: their extra state is tensors and plain values (`ema_lightning.data.samplers.rng_state`).

Writing. `AtomicCheckpointIO` writes `<target>.tmp-<pid>` beside the target (torch.save, flush, fsync)
and `os.replace`s it onto the target, so `<target>` is either the old complete file or the new complete
file. Lightning's own save goes through the system temp dir and copies across file systems, which on a
full disk leaves a truncated file under the real name. A failed write removes its temporary; a process
killed mid-write leaves one, which `remove_stale_temporaries(folder)` removes (called on the first save
into each folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

PathLike = Union[str, os.PathLike]

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
"""`--ckpt_path` values Lightning resolves itself (to a file it or its registry wrote)."""

SHARDED_METADATA = "meta.pt"
"""The file a sharded (distributed) checkpoint folder holds beside its shards (Lightning's `_METADATA_FILENAME`)."""

TEMPORARY_MARK = ".tmp-"
_TEMPORARY = re.compile(r"^(?P<target>.+)\.tmp-(?P<pid>\d+)$")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; `str()` reads `"<path>: <what is wrong>"` on one line."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written; `str()` reads `"<path>: checkpoint not written (<reason>); ..."`."""

    def __init__(self, path: PathLike, problem: str, errno: Optional[int] = None) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
        self.errno = errno

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.errno)


# ----------------------------------------------------------------------------- reading


def load_checkpoint_file(
    path: PathLike,
    *,
    required: Sequence[str] = ("state_dict",),
    map_location: Any = "cpu",
    mmap: bool = False,
) -> dict[str, Any]:
    """The checkpoint dict in `path`, read with `torch.load(weights_only=True)`.

    Args:
        path: a checkpoint file (`torch.save` of a dict, e.g. Lightning's `.ckpt`).
        required: keys the dict must hold.
        map_location: as for `torch.load`.
        mmap: map the file instead of reading it (zip-format files only; others are read): a cheap check.

    Raises:
        CheckpointError: the path is missing, not a regular file, empty, truncated, not a PyTorch
            checkpoint, holds Python objects (which only an unsafe unpickling would build), is not a
            dict, or lacks a `required` key.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(path, "no such file")
    if file.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file")
    if not file.is_file():
        raise CheckpointError(path, "is not a regular file")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(path, "is empty (0 bytes): not a checkpoint (an interrupted save leaves such a file)")
    is_zip = zipfile.is_zipfile(file)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, IndexError...
        raise _unreadable(path, file, size, is_zip, error) from error
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a checkpoint dict (a Lightning .ckpt holds a dict with 'state_dict')")
    missing = [key for key in required if key not in state]
    if missing:
        keys = ", ".join(repr(k) for k in list(state)[:6]) or "none"
        raise CheckpointError(path, f"has no {', '.join(repr(k) for k in missing)} (its keys: {keys}): not a Lightning checkpoint")
    if "state_dict" in required and not isinstance(state["state_dict"], dict):
        raise CheckpointError(path, f"'state_dict' is a {type(state['state_dict']).__name__}, not a dict of tensors")
    return state


def _unreadable(path: PathLike, file: Path, size: int, is_zip: bool, error: BaseException) -> CheckpointError:
    """The one-line reason why `torch.load(weights_only=True)` failed on `file`."""
    text = str(error)
    refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text, re.IGNORECASE)
    if refused:
        return CheckpointError(path, f"refused: loading it would import {refused.group(1)}, a Python object a "
                                     "weights-only load does not build (ema-lightning reads checkpoints with "
                                     "torch.load(weights_only=True) and runs no code from them); a checkpoint of this "
                                     "program holds only tensors and plain values")
    if not is_zip:
        with file.open("rb") as handle:
            head = handle.read(4)
        if head == _ZIP_MAGIC:
            return CheckpointError(path, f"is truncated or corrupt ({size} bytes; its zip directory is missing): "
                                         "a save that was interrupted or ran out of disk leaves such a file")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
    reason = reason[:160] or type(error).__name__
    return CheckpointError(path, f"is not a readable PyTorch checkpoint ({size} bytes; {type(error).__name__}: {reason})")


def check_checkpoint(path: Optional[PathLike]) -> Optional[dict[str, Any]]:
    """Check a `--ckpt_path` before the model is built, so a bad one fails in a second with one line;
    returns what it holds besides the tensors' data (memory-mapped: no tensor is read), e.g. its
    `hyper_parameters`, or None when there is nothing here to check.

    `None`, Lightning's own names ("last", "best", "hpc", "registry[:...]") and remote URLs pass
    unchecked (Lightning resolves them). A folder must be a sharded checkpoint (holding `meta.pt`,
    whose dict is returned); a file must load with `torch.load(weights_only=True)` as a dict with a
    `state_dict`.

    Raises:
        CheckpointError: what `load_checkpoint_file` raises, naming the path as given.
    """
    if path is None:
        return None
    text = str(path)
    if text in LIGHTNING_CKPT_NAMES or text.startswith("registry:") or "://" in text:
        return None
    folder = Path(text)
    if folder.is_dir():
        metadata = folder / SHARDED_METADATA
        if not metadata.is_file():
            raise CheckpointError(path, f"is a folder without {SHARDED_METADATA}: not a sharded checkpoint; give a .ckpt "
                                        "file or the folder a sharded save wrote")
        try:
            return load_checkpoint_file(metadata, required=(), mmap=True)
        except CheckpointError as error:
            raise CheckpointError(path, f"sharded checkpoint: {SHARDED_METADATA} {error.problem}") from error
    return load_checkpoint_file(path, mmap=True)


# ----------------------------------------------------------------------------- writing


def temporary_path(target: PathLike) -> Path:
    """`<target>.tmp-<pid>`: where this process writes `target` before renaming it into place."""
    target = Path(target)
    return target.with_name(f"{target.name}{TEMPORARY_MARK}{os.getpid()}")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no harmless existence probe (os.kill would terminate): keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: PathLike, target: Optional[str] = None) -> list[Path]:
    """Remove the `*.tmp-<pid>` files and folders in `folder` left by processes that no longer run
    (killed mid-save), only those of `target` when it is given; returns what was removed.
    Temporaries of running processes are kept."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or (target is not None and match.group("target") != target) or _process_alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_file(target: PathLike):
    """A binary handle on `<target>.tmp-<pid>` in `target`'s folder; when the block ends without error
    the bytes are flushed, fsynced and renamed onto `target` (`os.replace`), so `target` never exists
    half-written. On error the temporary is removed, `target` is untouched and the error propagates."""
    target = Path(target)
    temporary = temporary_path(target)
    try:
        with temporary.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(target.parent)


def save_atomically(obj: Any, target: PathLike) -> None:
    """`torch.save(obj)` to `target` through `atomic_file`.

    Raises:
        CheckpointSaveError: the write failed (e.g. disk full); the temporary is removed and the
            file already named `target`, if any, is untouched.
    """
    target = Path(target)
    previous = target.exists()
    try:
        with atomic_file(target) as handle:
            torch.save(obj, handle)
    except OSError as error:
        kept = "the earlier file of that name is intact" if previous else "nothing was left under that name"
        reason = error.strerror or str(error) or type(error).__name__
        raise CheckpointSaveError(target, f"checkpoint not written ({reason}); {kept}", error.errno) from error


def _is_local(path: PathLike) -> bool:
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` with an atomic save beside the target and a weights-only load.

    Save: see `save_atomically`; the first save into a folder removes stale temporaries there.
    Load: `load_checkpoint_file` (always `weights_only=True`, whatever Lightning asks; one-line
    `CheckpointError`s). Remote (`scheme://`) paths keep Lightning's behaviour, loaded weights-only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = target.parent.resolve()
        if folder not in self._cleaned:
            remove_stale_temporaries(folder)
            self._cleaned.add(folder)
        save_atomically(checkpoint, target)

    def load_checkpoint(
        self, path: PathLike, map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location)


def with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """Trainer `plugins` with an `AtomicCheckpointIO` added, unless one `CheckpointIO` is already there
    (a user's choice wins). `plugins`: None, one plugin or a list, as the Trainer accepts them."""
    if plugins is None:
        listed: list[Any] = []
    elif isinstance(plugins, Iterable) and not isinstance(plugins, (str, bytes)):
        listed = list(plugins)
    else:
        listed = [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in listed):
        return listed
    return [*listed, AtomicCheckpointIO()]
