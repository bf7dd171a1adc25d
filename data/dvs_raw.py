"""Raw layouts of the neuromorphic datasets: what must be on disk, how it is checked, how it is converted.

Each dataset has a scan function ``scan(raw_dir)`` that checks the extracted raw files **without changing
anything** and returns the conversion jobs; any problem raises :class:`DVSDataError` with one message naming what
was expected where ("expected <root>/extract/<class>/*.aedat ..., found nothing"). The jobs are run by
:func:`run_job`, which decodes with spikingjelly 2.0's own readers (imported lazily, they pull in torchaudio, h5py,
scipy and matplotlib) and writes spikingjelly's ``events_np`` layout, so spikingjelly's classes and ours can share
a dataset root:

=============  ==========================================  ======================================================
dataset        raw (``<root>/extract`` or ``--dvs-raw-dir``)  ``<root>/events_np``
=============  ==========================================  ======================================================
cifar10-dvs    ``<class>/cifar10_<class>_<i>.aedat``        ``<class>/cifar10_<class>_<i>.npz`` (AEDAT 2.0 reader)
gesture        ``DvsGesture/trials_to_{train,test}.txt``,   ``{train,test}/<CSV class - 1>/<trial>_<k>.npz``
               ``userXX_<light>.aedat`` + ``_labels.csv``   (AEDAT 3.1 reader, cut at the CSV windows [start, end))
ncaltech101    ``Caltech101/<class>/image_XXXX.bin``         ``<class>/image_XXXX.npz`` (40-bit ATIS reader)
nmnist         ``Train/<digit>/*.bin``, ``Test/<digit>/*.bin`` ``{train,test}/<digit>/<name>.npz`` (the same ATIS
               or flat ``<n>.bs2``/``<n>.bin`` + ``train*.txt``  reader as N-Caltech101)
               / ``test*.txt`` label lists (slayerPytorch)
=============  ==========================================  ======================================================
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

__all__ = [
    "CIFAR10_DVS_CLASSES", "NMNIST_DIGITS", "GESTURE_FOLDERS", "GESTURE_CLASSES", "GESTURE_NAMES_BY_CSV",
    "DVSDataError", "DVSConfigError", "Job",
    "SCANNERS", "ARCHIVES", "run_job", "read_atis", "listdir_sorted", "misplaced_hint",
]

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NMNIST_DIGITS = tuple(str(d) for d in range(10))  # the N-MNIST class folders

# DVS128 Gesture, gesture_mapping.csv: CSV class c (1..11) is stored by spikingjelly in folder str(c - 1).
GESTURE_NAMES_BY_CSV = {
    1: "hand_clapping", 2: "right_hand_wave", 3: "left_hand_wave", 4: "right_arm_clockwise",
    5: "right_arm_counter_clockwise", 6: "left_arm_clockwise", 7: "left_arm_counter_clockwise", 8: "arm_roll",
    9: "air_drums", 10: "air_guitar", 11: "other_gestures",
}
# spikingjelly (a torchvision DatasetFolder) numbers the folders in lexicographic order: '0','1','10','2',...,'9'.
# The reference trains with these indices, so we keep them: label index i is folder GESTURE_FOLDERS[i].
GESTURE_FOLDERS = tuple(sorted(str(c - 1) for c in GESTURE_NAMES_BY_CSV))
GESTURE_CLASSES = tuple(GESTURE_NAMES_BY_CSV[int(folder) + 1] for folder in GESTURE_FOLDERS)

# Archives that <root>/download may hold instead of an extracted tree (extracted without any checksum step).
ARCHIVES = {
    "cifar10-dvs": tuple(f"{c}.zip" for c in CIFAR10_DVS_CLASSES),
    "gesture": ("DvsGesture.tar.gz",),
    "ncaltech101": ("Caltech101.zip",),
    "nmnist": ("Train.zip", "Test.zip"),
}

ATIS_OVERFLOW_Y = 240  # an N-MNIST/N-Caltech101 event with y == 240 marks a 2**23 us timestamp overflow


try:  # the engine reports its SetupErrors as one line instead of a traceback
    from engine.errors import ConfigError as _ConfigBase, DatasetError as _DatasetBase
except ImportError:  # pragma: no cover - data/ used without the engine
    _ConfigBase = _DatasetBase = RuntimeError


class DVSDataError(_DatasetBase, FileNotFoundError):
    """A dataset root that is missing, empty, partially extracted or laid out differently from what is expected
    (also an ``engine.errors.DatasetError`` and a ``FileNotFoundError``)."""


class DVSConfigError(_ConfigBase, ValueError):
    """A DVS option that does not fit the data (also an ``engine.errors.ConfigError`` and a ``ValueError``)."""


@dataclass(frozen=True)
class Job:
    """One raw file to convert. ``target`` is relative to ``events_np``: a sample id (no extension) for the
    per-file formats, or the split folder (``train``/``test``) into which a Gesture trial is cut."""
    kind: str  # "aedat2" | "aedat3" | "atis"
    source: Path
    target: str
    labels_csv: Path | None = None


def listdir_sorted(path: Path) -> list[str]:
    """Entry names of ``path`` in sorted order (never the filesystem's listing order)."""
    with os.scandir(path) as it:
        return sorted(entry.name for entry in it)


def _subdirs(path: Path) -> list[str]:
    return [name for name in listdir_sorted(path) if (path / name).is_dir() and not name.startswith(".")]


def _files(path: Path, suffixes: tuple[str, ...]) -> list[str]:
    if not path.is_dir():
        return []
    return [name for name in listdir_sorted(path)
            if name.lower().endswith(suffixes) and not name.startswith(".") and (path / name).is_file()]


def misplaced_hint(root: Path, suffixes: tuple[str, ...], limit_dirs: int = 2000) -> str:
    """Where files with these suffixes are, when they are not where expected (a bounded, read-only walk)."""
    root = Path(root)
    if not root.is_dir():
        return ""
    found: dict[str, int] = {}
    for n_dirs, (dirpath, dirnames, filenames) in enumerate(os.walk(root, followlinks=True)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("events_np",)
                             and not d.startswith(("frames_number_", "duration_")))
        count = sum(name.lower().endswith(suffixes) for name in filenames)
        if count:
            found[dirpath] = count
        if n_dirs >= limit_dirs:
            break
    if not found:
        return ""
    where = ", ".join(f"{count} in {path}" for path, count in sorted(found.items())[:3])
    more = f" and {len(found) - 3} more folders" if len(found) > 3 else ""
    return f" (found {'/'.join(suffixes)} files elsewhere: {where}{more}; move them to the expected place)"


def _nothing(name: str, expected: str, raw_dir: Path, root: Path, suffixes: tuple[str, ...]) -> DVSDataError:
    if root.exists():
        where = misplaced_hint(root, suffixes)
    elif raw_dir.resolve().is_relative_to(root.resolve()):  # the raw files were looked for inside the root
        where = f" (the dataset root {root} does not exist)"
    else:  # --dvs-raw-dir elsewhere: the root is only where the frames will go
        where = "" if raw_dir.exists() else f" (the folder {raw_dir} does not exist)"
    return DVSDataError(f"{name}: expected {expected}, found nothing{where}")


# --------------------------------------------------------------------------------------------- scanners
def scan_cifar10_dvs(raw_dir: Path, root: Path) -> list[Job]:
    expected = f"{raw_dir}/<class>/*.aedat for the 10 classes {', '.join(CIFAR10_DVS_CLASSES)}"
    files = {c: _files(raw_dir / c, (".aedat",)) for c in CIFAR10_DVS_CLASSES}
    empty = [c for c, names in files.items() if not names]
    if len(empty) == len(CIFAR10_DVS_CLASSES):
        raise _nothing("cifar10-dvs", expected, raw_dir, root, (".aedat",))
    if empty:
        raise DVSDataError(f"cifar10-dvs: expected {expected}; partially extracted: no .aedat files in "
                           + ", ".join(f"{raw_dir}/{c}" for c in empty))
    short = {c: len(names) for c, names in files.items() if len(names) != 1000}
    if short:
        _logger.warning("cifar10-dvs: the full dataset has 1000 recordings per class; %s (partially extracted?)",
                        ", ".join(f"{raw_dir / c} has {n}" for c, n in sorted(short.items())[:4]))
    return [Job("aedat2", raw_dir / c / name, f"{c}/{Path(name).stem}") for c in CIFAR10_DVS_CLASSES
            for name in files[c]]


def _read_labels_csv(path: Path) -> np.ndarray:
    """The Gesture labels CSV as an [N, 3] uint32 array (class, start us, end us); works for one-row files."""
    rows = np.loadtxt(path, dtype=np.uint32, delimiter=",", skiprows=1, ndmin=2)
    if rows.shape[1] != 3:
        raise ValueError(f"expected 3 columns (class,startTime_usec,endTime_usec), got {rows.shape[1]}")
    bad = rows[(rows[:, 0] < 1) | (rows[:, 0] > 11), 0]
    if bad.size:
        raise ValueError(f"class {int(bad[0])} is outside 1..11")
    return rows


def scan_gesture(raw_dir: Path, root: Path) -> list[Job]:
    base = raw_dir / "DvsGesture"
    expected = (f"{base}/trials_to_train.txt, {base}/trials_to_test.txt and the userXX_<lighting>.aedat + "
                f"userXX_<lighting>_labels.csv files they list")
    lists = {"train": base / "trials_to_train.txt", "test": base / "trials_to_test.txt"}
    have = {split: path.is_file() for split, path in lists.items()}
    if not any(have.values()) and not _files(base, (".aedat",)):
        raise _nothing("gesture", expected, raw_dir, root, (".aedat", "trials_to_train.txt"))
    if not all(have.values()):
        missing = [str(path) for split, path in lists.items() if not have[split]]
        raise DVSDataError(f"gesture: expected {expected}; partially extracted: missing {', '.join(missing)}")
    jobs, missing = [], []
    for split, list_file in lists.items():
        trials = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not trials:
            raise DVSDataError(f"gesture: expected {expected}; {list_file} lists no trials")
        for trial in trials:
            aedat = base / trial
            csv = base / f"{Path(trial).stem}_labels.csv"
            for path in (aedat, csv):
                if not path.is_file():
                    missing.append(path.name)
            if aedat.is_file() and csv.is_file():
                try:
                    _read_labels_csv(csv)
                except ValueError as err:
                    raise DVSDataError(f"gesture: cannot read the labels in {csv}: {err}") from None
                jobs.append(Job("aedat3", aedat, split, csv))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise DVSDataError(f"gesture: expected {expected}; partially extracted: {len(missing)} listed files are "
                           f"missing from {base}: {shown}")
    return jobs


def _check_atis_sizes(paths: list[Path], name: str) -> None:
    for path in paths:
        size = path.stat().st_size
        if size == 0 or size % 5:
            problem = "no events" if size == 0 else "not a multiple of 5 (40-bit ATIS events)"
            raise DVSDataError(f"{name}: {path} has {size} bytes, {problem}; the file is truncated or not an ATIS .bin")


def scan_ncaltech101(raw_dir: Path, root: Path) -> list[Job]:
    base = raw_dir / "Caltech101"
    expected = f"{base}/<class>/*.bin (the 101 folders of Caltech101.zip)"
    classes = _subdirs(base) if base.is_dir() else []
    files = {c: _files(base / c, (".bin",)) for c in classes}
    if not any(files.values()):
        raise _nothing("ncaltech101", expected, raw_dir, root, (".bin",))
    empty = [c for c in classes if not files[c]]
    if empty:
        raise DVSDataError(f"ncaltech101: expected {expected}; partially extracted: no .bin files in "
                           + ", ".join(f"{base}/{c}" for c in empty[:5]) + (" ..." if len(empty) > 5 else ""))
    jobs = [Job("atis", base / c / name, f"{c}/{Path(name).stem}") for c in classes for name in files[c]]
    if (len(classes), len(jobs)) != (101, 8709):
        _logger.warning("ncaltech101: found %d classes and %d recordings in %s; the full dataset has 101 and 8709 "
                        "(partially extracted?)", len(classes), len(jobs), base)
    _check_atis_sizes([job.source for job in jobs], "ncaltech101")
    return jobs


def _read_sample_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
            raise DVSDataError(f"nmnist: {path}: expected '<sample> <class>' rows, got {line!r}")
        label = int(fields[1])
        if not 0 <= label <= 9:
            raise DVSDataError(f"nmnist: {path}, row {number} ({line.strip()!r}): class {label} is not a digit 0..9; "
                               f"expected '<sample> <class>' rows with the classes 0..9 (a 1-based list? subtract 1)")
        rows.append((fields[0], label))
    return rows


def scan_nmnist(raw_dir: Path, root: Path) -> list[Job]:
    expected = (f"{raw_dir}/Train/<digit>/*.bin and {raw_dir}/Test/<digit>/*.bin (Train.zip/Test.zip), or "
                f"<n>.bs2/<n>.bin files with train*.txt and test*.txt label lists in {raw_dir}")
    if (raw_dir / "Train").is_dir() or (raw_dir / "Test").is_dir():
        jobs = []
        for split in ("Train", "Test"):
            digits = _subdirs(raw_dir / split) if (raw_dir / split).is_dir() else []
            for d in digits:
                if d not in NMNIST_DIGITS:
                    raise DVSDataError(f"nmnist: expected {expected}; {raw_dir / split / d} is not a digit folder 0..9 "
                                       f"(move its recordings into the folder of their digit)")
            files = {d: _files(raw_dir / split / d, (".bin",)) for d in digits}
            if not any(files.values()):
                raise DVSDataError(f"nmnist: expected {expected}; partially extracted: no .bin files under "
                                   f"{raw_dir / split}")
            jobs += [Job("atis", raw_dir / split / d / name, f"{split.lower()}/{d}/{Path(name).stem}")
                     for d in digits for name in files[d]]
    else:
        names = listdir_sorted(raw_dir) if raw_dir.is_dir() else []
        lists = {split: [n for n in names if n.lower().startswith(split) and n.lower().endswith(".txt")]
                 for split in ("train", "test")}
        events = {Path(n).stem: n for n in names if n.lower().endswith((".bs2", ".bin"))}
        if not events and not any(lists.values()):
            raise _nothing("nmnist", expected, raw_dir, root, (".bin", ".bs2"))
        missing_lists = [s for s, found in lists.items() if len(found) != 1]
        if missing_lists:
            raise DVSDataError(f"nmnist: expected {expected}; need exactly one {' and one '.join(missing_lists)}"
                               f"*.txt list in {raw_dir}, found {sum(map(len, lists.values()))} lists")
        jobs, missing = [], []
        for split, (list_name,) in lists.items():
            for sample, label in _read_sample_list(raw_dir / list_name):
                if sample not in events:
                    missing.append(sample)
                    continue
                jobs.append(Job("atis", raw_dir / events[sample], f"{split}/{label}/{sample}"))
        if missing:
            raise DVSDataError(f"nmnist: expected {expected}; partially extracted: {len(missing)} listed samples "
                               f"have no .bs2/.bin file in {raw_dir} (first: {', '.join(missing[:4])})")
    _check_atis_sizes([job.source for job in jobs], "nmnist")
    return jobs


SCANNERS = {
    "cifar10-dvs": scan_cifar10_dvs,
    "gesture": scan_gesture,
    "ncaltech101": scan_ncaltech101,
    "nmnist": scan_nmnist,
}


# --------------------------------------------------------------------------------------------- converters
def read_atis(path: Path) -> dict:
    """Decode a 40-bit ATIS file (N-MNIST, N-Caltech101) with spikingjelly's N-Caltech101 reader.

    On top of spikingjelly, overflow marker events (y == 240, which spikingjelly keeps as ordinary events) are
    removed and every later timestamp is advanced by 2**23 us, as the format defines. Arrays stay uint32, as in
    spikingjelly's ``events_np``.
    """
    from spikingjelly.datasets import utils as sj_utils

    events = sj_utils.load_ATIS_bin(path)
    overflow = events["y"] == ATIS_OVERFLOW_Y
    if overflow.any():
        shift = np.cumsum(overflow, dtype=np.uint32) << np.uint32(23)
        keep = ~overflow
        events = {"t": (events["t"] + shift)[keep], "x": events["x"][keep], "y": events["y"][keep],
                  "p": events["p"][keep]}
    return events


def _read_aedat2_dvs128(path: Path) -> dict:
    from spikingjelly.datasets import cifar10_dvs

    reader = getattr(cifar10_dvs, "_load_origin_data", None)
    if reader is None:  # pragma: no cover - guards a spikingjelly upgrade
        raise RuntimeError("spikingjelly.datasets.cifar10_dvs._load_origin_data is missing; this code needs "
                           "spikingjelly==2.0.0 (see requirements.txt)")
    return reader(path)


def _save_events(path: Path, events: dict) -> None:
    from spikingjelly.datasets import utils as sj_utils

    sj_utils.np_savez(path, t=events["t"], x=events["x"], y=events["y"], p=events["p"])


def _require_events(job: Job, events: dict) -> None:
    """Refuse a file that decoded to no events (empty, or cut off after its header)."""
    if not len(events["t"]):
        raise DVSDataError(f"{job.source} ({job.kind}) holds no events; the file is truncated or not a recording: "
                           f"replace it with a complete copy")


def _cut_gesture_trial(job: Job, out_root: Path) -> None:
    """spikingjelly's Gesture cutting: one sample per CSV row, events with start <= t < end, saved as
    ``<split>/<class - 1>/<trial>_<k>.npz`` where k counts earlier rows of the same class in this trial."""
    from spikingjelly.datasets import utils as sj_utils

    events = sj_utils.load_aedat_v3(job.source)
    _require_events(job, events)
    rows = _read_labels_csv(job.labels_csv)
    count = [0] * 11
    trial = job.source.stem
    for label_csv, start, end in rows:
        label = int(label_csv) - 1
        mask = (events["t"] >= start) & (events["t"] < end)
        out_dir = out_root / job.target / str(label)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_events(out_dir / f"{trial}_{count[label]}.npz", {k: v[mask] for k, v in events.items()})
        count[label] += 1


def run_job(job: Job, out_root: Path) -> None:
    """Convert one raw file into ``out_root`` (a temporary ``events_np``)."""
    try:
        if job.kind == "aedat3":
            _cut_gesture_trial(job, out_root)
            return
        events = _read_aedat2_dvs128(job.source) if job.kind == "aedat2" else read_atis(job.source)
        _require_events(job, events)
        target = out_root / f"{job.target}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        _save_events(target, events)
    except DVSDataError:
        raise
    except Exception as err:  # name the file: spikingjelly's own messages do not
        raise DVSDataError(f"cannot decode {job.source} ({job.kind}): {type(err).__name__}: {err}") from err
