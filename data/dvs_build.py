"""Offline, crash-safe preparation of a neuromorphic dataset root: ``events_np`` and the frame caches.

What happens, in order (see docs/datasets.md):

1. **Check before touching.** The raw layout is scanned read-only (``data.dvs_raw``); a bad root raises
   ``DVSDataError`` and is left exactly as it was. Nothing is ever downloaded unless ``download=True``; then each
   missing archive is written to a temporary name, checked against its MD5 and renamed when complete.
2. **Lock.** Builders and downloads take an exclusive ``flock`` on the root directory itself (no lock file), so DDP
   ranks or concurrent jobs on one root download and build once; the others wait and reuse the result.
3. **Stale state.** Under the lock, leftovers of an interrupted build are removed with a warning instead of
   failing forever: spikingjelly's ``events_np.building`` / ``<frames dir>.building`` markers together with the
   partial directory they guard, our own ``.<dir>.tmp-<pid>`` folders and ``download/.<archive>.part-<pid>``
   files. The archives in ``download/`` and the raw files are never touched (a user's archive is not checksummed,
   so it is never deleted).
4. **Atomic build.** ``events_np`` and ``frames_number_<T>_split_by_number`` are written into a temporary
   sibling and renamed into place when complete, so a crash never leaves a half-written folder that looks done.
   A new conversion first deletes what was derived from the old ``events_np``: its frame caches and the split
   files at their default paths.

The directory names and file formats are spikingjelly 2.0's, so its dataset classes and ours share a root.
"""
from __future__ import annotations

import errno
import fcntl
import gzip
import json
import logging
import os
import shutil
import tarfile
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .dvs_raw import ARCHIVES, SCANNERS, DVSDataError, listdir_sorted, run_job
from .splits import default_split_files

_logger = logging.getLogger(__name__)

__all__ = ["root_lock", "clear_stale", "atomic_dir", "prepare_events", "build_frames", "frames_dir_name",
           "read_npz", "load_events", "integrate_frames"]

EVENTS_DIR = "events_np"
SOURCE_FILE = ".source.json"  # in events_np: the raw folder it was converted from


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@contextmanager
def root_lock(root: Path):
    """Exclusive advisory lock on the directory ``root`` (released by the OS if the process dies)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            _logger.info("Waiting for another process that is preparing %s ...", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clear_stale(root: Path, name: str) -> None:
    """Remove what an interrupted build of ``root/name`` left behind. Call only while holding :func:`root_lock`."""
    marker = root / f"{name}.building"
    if marker.exists():
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        marker.unlink()
        _logger.warning("Found the marker %s of an interrupted dataset build (spikingjelly leaves it after any "
                        "failure); removed it and the partial directory %s, rebuilding.", marker, target)
    for tmp in sorted(root.glob(f".{name}.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        _logger.warning("Removed %s, the partial output of an interrupted build.", tmp)


@contextmanager
def atomic_dir(root: Path, name: str):
    """Yield a temporary sibling of ``root/name``; rename it to ``root/name`` if the block succeeds, else delete it."""
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise DVSDataError(f"cannot build {root / name} ({err.strerror}): the converted data is written inside the "
                           f"dataset folder {root}; make it writable, or convert a writable copy once") from None
    try:
        yield tmp
        os.rename(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run_parallel(fn: Callable, items: Iterable) -> None:
    items = list(items)
    if len(items) < 8 or _workers() == 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                future.result()
        except BaseException:  # a failed job or Ctrl-C: drop the queued jobs instead of running every one
            pool.shutdown(cancel_futures=True)
            raise


# --------------------------------------------------------------------------------------------- events_np
def _events_ready(root: Path) -> bool:
    events = root / EVENTS_DIR
    if not events.is_dir() or (root / f"{EVENTS_DIR}.building").exists():
        return False
    if not listdir_sorted(events):
        raise DVSDataError(f"{events} exists but is empty (left by an interrupted tool?); delete it to rebuild "
                           f"it from the raw files")
    return True


def _resources(name: str) -> tuple[list[tuple[str, str, str]], bool]:
    from spikingjelly import datasets as sj

    cls = {"cifar10-dvs": sj.CIFAR10DVS, "gesture": sj.DVS128Gesture, "ncaltech101": sj.NCaltech101,
           "nmnist": sj.NMNIST}[name]
    return [tuple(r) for r in cls.resource_url_md5()], cls.downloadable()


def _download(name: str, root: Path, download_dir: Path) -> None:
    """Fetch the archives that are missing from ``download_dir`` (only with ``download=True``), holding
    :func:`root_lock`: each goes to a temporary name, is checked against its MD5 and renamed when complete, so an
    interrupted download never passes for an archive and processes sharing the root download once. Existing
    archives are neither checksummed nor deleted."""
    resources, downloadable = _resources(name)
    if not downloadable:
        raise DVSDataError(
            f"{name} cannot be downloaded automatically (its licence requires a manual download): get "
            f"{', '.join(r[0] for r in resources)} from {resources[0][1]} and put them in {download_dir} "
            f"(or extract them to {root / 'extract'})")
    root.mkdir(parents=True, exist_ok=True)
    download_dir.mkdir(exist_ok=True)
    with root_lock(root):
        for file_name, url, md5 in resources:
            for partial in sorted(download_dir.glob(f".{file_name}.part-*")):
                partial.unlink()
                _logger.warning("Removed %s, the partial download of an interrupted run.", partial)
            if not (download_dir / file_name).exists():
                _download_one(name, url, md5, download_dir / file_name)


def _download_one(name: str, url: str, md5: str | None, target: Path) -> None:
    """Download ``url`` to ``target`` through ``.<target>.part-<pid>``, renamed once complete and matching ``md5``."""
    from torchvision.datasets.utils import check_md5, download_url

    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    _logger.info("Downloading %s from %s to %s", target.name, url, target.parent)
    try:
        download_url(url=url, root=str(target.parent), filename=partial.name)
        intact = not md5 or check_md5(partial, md5)
        if intact:
            os.replace(partial, target)
    except (OSError, RuntimeError) as exc:
        raise DVSDataError(f"{name}: downloading {target.name} from {url} failed ({exc}); check the network, "
                           f"or download it yourself into {target.parent}") from None
    finally:
        partial.unlink(missing_ok=True)
    if not intact:
        raise DVSDataError(f"{name}: the download of {target.name} from {url} does not match its MD5 {md5} (cut off "
                           f"or corrupted on the way?); rerun to download it again")


def _extract_archives(name: str, root: Path, download_dir: Path, raw_dir: Path) -> None:
    """Extract ``download/`` archives into ``raw_dir`` atomically; the extracted tree is scanned before the rename,
    so a wrong archive leaves the root unchanged."""
    with root_lock(root):
        if raw_dir.exists():
            return
        clear_stale(root, raw_dir.name)
        with atomic_dir(root, raw_dir.name) as tmp:
            for archive in ARCHIVES[name]:
                _logger.info("Extracting %s to %s", download_dir / archive, raw_dir)
                _extract(name, download_dir / archive, tmp)
            try:
                SCANNERS[name](tmp, root)
            except DVSDataError as err:
                raise DVSDataError(f"{str(err).replace(str(tmp), str(raw_dir))} (after extracting "
                                   f"{', '.join(ARCHIVES[name])} from {download_dir}; nothing was kept)") from None


def _extract(name: str, archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target``; a damaged archive is a DVSDataError naming it and the fix."""
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(str(archive), str(target))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        again = "rerun with --download to fetch it again" if name == "cifar10-dvs" else "put a complete copy there"
        raise DVSDataError(f"{name}: cannot extract {archive} ({type(err).__name__}: {err}): the archive is damaged "
                           f"or incomplete (an interrupted download or copy?); delete it and {again}") from None


def prepare_events(name: str, root: Path, raw_dir: Path | None = None, download: bool = False) -> Path:
    """Make sure ``root/events_np`` exists and is complete; return it.

    ``raw_dir`` (default ``root/extract``) holds the extracted raw files and may be read-only or elsewhere (for
    example a shared folder); only ``root`` is written to. If ``raw_dir`` is missing but ``root/download`` holds the
    dataset's archives, they are extracted to ``root/extract`` first (no checksum step).
    """
    root = Path(root).expanduser()
    default_raw = raw_dir is None
    raw_dir = root / "extract" if default_raw else Path(raw_dir).expanduser()
    if root.is_dir() and _events_ready(root):
        _warn_other_source(root / EVENTS_DIR, raw_dir)
        return root / EVENTS_DIR
    if root.exists() and not root.is_dir():
        raise DVSDataError(f"{name}: the dataset root {root} is a file, expected a directory")
    download_dir = root / "download"
    if default_raw and not raw_dir.exists():
        archives = [a for a in ARCHIVES[name] if (download_dir / a).is_file()]
        if download and len(archives) < len(ARCHIVES[name]):
            _download(name, root, download_dir)
            archives = list(ARCHIVES[name])
        if archives:
            missing = [a for a in ARCHIVES[name] if a not in archives]
            if missing:
                raise DVSDataError(f"{name}: expected the archives {', '.join(ARCHIVES[name])} in {download_dir} "
                                   f"(or the extracted files in {raw_dir}); missing {', '.join(missing)}")
            _extract_archives(name, root, download_dir, raw_dir)
    try:
        jobs = SCANNERS[name](raw_dir, root)
    except DVSDataError as err:  # a missing root is named by the "found nothing" errors, where it is the cause
        fetchable = name == "cifar10-dvs" and not download and not raw_dir.exists()
        hint = "; pass --download to fetch it from figshare" if fetchable else ""
        raise DVSDataError(f"{err}{hint}") from None
    root.mkdir(parents=True, exist_ok=True)  # only reached with valid raw files elsewhere (raw_dir given)
    with root_lock(root):
        if _events_ready(root):
            return root / EVENTS_DIR
        clear_stale(root, EVENTS_DIR)
        _forget_old_conversion(root, name)
        _logger.info("Converting %d raw files from %s into %s", len(jobs), raw_dir, root / EVENTS_DIR)
        with atomic_dir(root, EVENTS_DIR) as tmp:
            if name == "gesture":  # every class folder in both splits, as spikingjelly makes them
                for split in ("train", "test"):
                    for label in range(11):
                        (tmp / split / str(label)).mkdir(parents=True)
            _run_parallel(lambda job: run_job(job, tmp), jobs)
            (tmp / SOURCE_FILE).write_text(json.dumps({"raw_dir": str(raw_dir.resolve()), "files": len(jobs)}) + "\n")
    return root / EVENTS_DIR


def _forget_old_conversion(root: Path, name: str) -> None:
    """Delete what was derived from an earlier ``events_np``, before a new conversion (so that an interruption never
    leaves it next to new events): the frame caches, and the split files at their default paths, which may lack
    samples of the new raw files (a ``--dvs-split-file`` elsewhere is the user's and is kept)."""
    for stale in sorted(root.glob(frames_dir_name("*"))):
        _logger.info("Deleting %s: it holds frames of an earlier conversion of the raw files", stale)
        shutil.rmtree(stale)
    for stale in default_split_files(root, name):
        _logger.info("Deleting %s: it splits the samples of an earlier conversion of the raw files", stale)
        stale.unlink()


def _warn_other_source(events: Path, raw_dir: Path) -> None:
    """Warn when ``events`` was converted from another raw folder than ``raw_dir``, which holds files too: the
    conversion is kept (it is trusted, not re-scanned), so new or other raw files would be silently ignored."""
    try:
        source = json.loads((events / SOURCE_FILE).read_text())["raw_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # converted before the source was recorded, or by spikingjelly
    if raw_dir.is_dir() and Path(source) != raw_dir.resolve():
        _logger.warning("%s was converted from %s, not from %s; using it as it is. Delete %s to convert the raw "
                        "files of %s instead (its frame caches are then rebuilt too).", events, source, raw_dir,
                        events, raw_dir)


# --------------------------------------------------------------------------------------------- frames
def frames_dir_name(frames_number: int) -> str:
    """spikingjelly's cache folder for ``frames_number`` frames with ``split_by='number'``."""
    return f"frames_number_{frames_number}_split_by_number"


# np.load reads each array's header with ast.literal_eval, whose AST conversion CPython 3.11 does not make
# thread-safe (gh-106905: a spurious "SystemError: AST constructor recursion depth mismatch" when threads parse at
# once), so the frame builder's threads read their event files one at a time.
_NPZ_READ_LOCK = threading.Lock()


def read_npz(path: str | os.PathLike, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one cached ``.npz`` file (one thread at a time: :data:`_NPZ_READ_LOCK`).

    Raises:
        DVSDataError: the file is missing, truncated or damaged; the message names it and the cache folder to delete
            (its ``events_np`` or ``frames_number_*`` ancestor).
    """
    try:
        with _NPZ_READ_LOCK, np.load(path) as data:
            return {key: np.asarray(data[key]) for key in keys}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        path = Path(path)
        folder = next((p for p in path.parents if p.name == EVENTS_DIR or p.name.startswith("frames_number_")),
                      path.parent)
        raise DVSDataError(f"cannot read the cached file {path} ({type(err).__name__}: {err}); the cache is damaged "
                           f"(an interrupted copy or a full disk?): delete {folder} to rebuild it") from None


def load_events(path: str | os.PathLike) -> dict:
    """Events of one ``events_np`` file as native-endian int64 arrays (CIFAR10-DVS stores ``t`` as big-endian
    ``>u4`` and ATIS files as uint32; ``torch.from_numpy`` rejects the former and barely supports the latter)."""
    return {key: value.astype(np.int64) for key, value in read_npz(path, ("t", "x", "y", "p")).items()}


def integrate_frames(events: dict, frames_number: int, H: int, W: int) -> np.ndarray:
    """spikingjelly's ``integrate_events_by_fixed_frames_number(..., split_by='number')`` as float32 [T, 2, H, W].

    Channel 0 counts p == 0, channel 1 p != 0; slice j holds events [j*(N//T), (j+1)*(N//T)) and the last slice
    the remainder. Events outside the H x W sensor (malformed files) are dropped with a warning, where spikingjelly
    would fail or count them at a wrong pixel.
    """
    from spikingjelly.datasets import utils as sj_utils

    inside = (events["x"] >= 0) & (events["x"] < W) & (events["y"] >= 0) & (events["y"] < H)
    if not inside.all():
        _logger.warning("Dropping %d of %d events outside the %dx%d sensor", int((~inside).sum()), inside.size, H, W)
        events = {key: value[inside] for key, value in events.items()}
    frames = sj_utils.integrate_events_by_fixed_frames_number(events, "number", frames_number, H, W)
    return frames.astype(np.float32)


def build_frames(root: Path, sample_ids: list[str], frames_number: int, H: int, W: int) -> Path:
    """Make sure ``root/frames_number_<T>_split_by_number/<id>.npz`` exists for every sample id; return the folder.

    A complete folder (ours or spikingjelly's) is reused; one that lacks some samples is an error rather than a
    silent partial dataset.
    """
    root = Path(root)
    name = frames_dir_name(frames_number)
    frames_dir = root / name

    def missing() -> list[str]:
        return [sid for sid in sample_ids if not (frames_dir / f"{sid}.npz").is_file()]

    def ready() -> bool:
        if not frames_dir.is_dir() or (root / f"{name}.building").exists():
            return False
        lacking = missing()
        if lacking:
            raise DVSDataError(f"the frame cache {frames_dir} lacks {len(lacking)} of {len(sample_ids)} samples "
                               f"(first: {lacking[0]}.npz); delete {frames_dir} to rebuild it")
        return True

    if ready():
        return frames_dir
    with root_lock(root):
        if ready():
            return frames_dir
        clear_stale(root, name)
        _logger.info("Integrating %d samples into %d frames each (split_by='number') in %s", len(sample_ids),
                     frames_number, frames_dir)
        from spikingjelly.datasets import utils as sj_utils

        with atomic_dir(root, name) as tmp:
            def one(sid: str) -> None:
                frames = integrate_frames(load_events(root / EVENTS_DIR / f"{sid}.npz"), frames_number, H, W)
                target = tmp / f"{sid}.npz"
                target.parent.mkdir(parents=True, exist_ok=True)
                sj_utils.np_savez(target, frames=frames)

            _run_parallel(one, sample_ids)
    return frames_dir
