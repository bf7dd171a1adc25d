"""Offline, crash-safe preparation of a neuromorphic dataset root: ``events_np`` and the frame caches.

What happens, in order (see docs/datasets.md):

1. **Check before touching.** The raw layout is scanned read-only (``data.dvs_raw``); a bad root raises
   ``DVSDataError`` and is left exactly as it was. Nothing is ever downloaded unless ``download=True``.
2. **Lock.** Builders take an exclusive ``flock`` on the root directory itself (no lock file), so DDP ranks or
   concurrent jobs on one root build once; the others wait and reuse the result.
3. **Stale state.** Under the lock, leftovers of an interrupted build are removed with a warning instead of
   failing forever: spikingjelly's ``events_np.building`` / ``<frames dir>.building`` markers together with the
   partial directory they guard, and our own ``.<dir>.tmp-<pid>`` folders. ``download/`` and the raw files are
   never touched (no checksum step, so a user's archive is never deleted).
4. **Atomic build.** ``events_np`` and ``frames_number_<T>_split_by_number`` are written into a temporary
   sibling and renamed into place when complete, so a crash never leaves a half-written folder that looks done.

The directory names and file formats are spikingjelly 2.0's, so its dataset classes and ours share a root.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .dvs_raw import ARCHIVES, SCANNERS, DVSDataError, listdir_sorted, run_job

_logger = logging.getLogger(__name__)

__all__ = ["root_lock", "clear_stale", "atomic_dir", "prepare_events", "build_frames", "frames_dir_name",
           "load_events", "integrate_frames"]

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
    tmp.mkdir()
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
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


# --------------------------------------------------------------------------------------------- events_np
def _events_ready(root: Path) -> bool:
    events = root / EVENTS_DIR
    if not events.is_dir() or (root / f"{EVENTS_DIR}.building").exists():
        return False
    if not listdir_sorted(events):
        raise DVSDataError(f"{events} exists but is empty (left by an interrupted tool?); delete it to rebuild "
                           f"it from the raw files")
    return True


def _resources(name: str) -> list[tuple[str, str, str]]:
    from spikingjelly import datasets as sj

    cls = {"cifar10-dvs": sj.CIFAR10DVS, "gesture": sj.DVS128Gesture, "ncaltech101": sj.NCaltech101,
           "nmnist": sj.NMNIST}[name]
    return [tuple(r) for r in cls.resource_url_md5()], cls.downloadable()


def _download(name: str, root: Path, download_dir: Path) -> None:
    """Fetch the archives that are missing from ``download_dir`` (only with ``download=True``). Existing files are
    neither checksummed nor deleted."""
    resources, downloadable = _resources(name)
    if not downloadable:
        raise DVSDataError(
            f"{name} cannot be downloaded automatically (its licence requires a manual download): get "
            f"{', '.join(r[0] for r in resources)} from {resources[0][1]} and put them in {download_dir} "
            f"(or extract them to {root / 'extract'})")
    from torchvision.datasets.utils import download_url

    root.mkdir(parents=True, exist_ok=True)
    download_dir.mkdir(exist_ok=True)
    for file_name, url, md5 in resources:
        if not (download_dir / file_name).exists():
            _logger.info("Downloading %s from %s to %s", file_name, url, download_dir)
            try:
                download_url(url=url, root=str(download_dir), filename=file_name, md5=md5)
            except (OSError, RuntimeError) as exc:
                raise DVSDataError(f"{name}: downloading {file_name} from {url} failed ({exc}); check the network, "
                                   f"or download it yourself into {download_dir}") from None


def _extract_archives(name: str, root: Path, download_dir: Path, raw_dir: Path) -> None:
    """Extract ``download/`` archives into ``raw_dir`` atomically; the extracted tree is scanned before the rename,
    so a wrong archive leaves the root unchanged."""
    from torchvision.datasets.utils import extract_archive

    with root_lock(root):
        if raw_dir.exists():
            return
        clear_stale(root, raw_dir.name)
        with atomic_dir(root, raw_dir.name) as tmp:
            for archive in ARCHIVES[name]:
                _logger.info("Extracting %s to %s", download_dir / archive, raw_dir)
                extract_archive(str(download_dir / archive), str(tmp))
            try:
                SCANNERS[name](tmp, root)
            except DVSDataError as err:
                raise DVSDataError(f"{str(err).replace(str(tmp), str(raw_dir))} (after extracting "
                                   f"{', '.join(ARCHIVES[name])} from {download_dir}; nothing was kept)") from None


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
    except DVSDataError as err:
        if not root.exists():
            err = DVSDataError(f"{err} (the dataset root {root} does not exist)")
        fetchable = name == "cifar10-dvs" and not download and not raw_dir.exists()
        hint = "; pass --download to fetch it from figshare" if fetchable else ""
        raise DVSDataError(f"{err}{hint}") from None
    root.mkdir(parents=True, exist_ok=True)  # only reached with valid raw files elsewhere (raw_dir given)
    with root_lock(root):
        if _events_ready(root):
            return root / EVENTS_DIR
        clear_stale(root, EVENTS_DIR)
        _logger.info("Converting %d raw files from %s into %s", len(jobs), raw_dir, root / EVENTS_DIR)
        with atomic_dir(root, EVENTS_DIR) as tmp:
            if name == "gesture":  # every class folder in both splits, as spikingjelly makes them
                for split in ("train", "test"):
                    for label in range(11):
                        (tmp / split / str(label)).mkdir(parents=True)
            _run_parallel(lambda job: run_job(job, tmp), jobs)
            (tmp / SOURCE_FILE).write_text(json.dumps({"raw_dir": str(raw_dir.resolve()), "files": len(jobs)}) + "\n")
        for stale in sorted(root.glob(frames_dir_name("*"))):  # frames of the events this conversion replaced
            _logger.info("Deleting %s: it holds frames of an earlier conversion of the raw files", stale)
            shutil.rmtree(stale)
    return root / EVENTS_DIR


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


def load_events(path: str | os.PathLike) -> dict:
    """Events of one ``events_np`` file as native-endian int64 arrays (CIFAR10-DVS stores ``t`` as big-endian
    ``>u4`` and ATIS files as uint32; ``torch.from_numpy`` rejects the former and barely supports the latter)."""
    with np.load(path) as data:
        return {key: np.asarray(data[key]).astype(np.int64) for key in ("t", "x", "y", "p")}


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
