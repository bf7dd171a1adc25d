"""Static datasets (digits, IDX files, missing folders) and the loaders built from them."""
import argparse
import gzip
import os
from collections import Counter

import numpy as np
import pytest
import torch

from data import build_dataset
from data.static import read_idx
from engine.args import get_args_parser
from engine.config import parse_args
from engine.errors import ConfigError, DatasetError

FASHION_MNIST_DEB = "/usr/share/datasets/fashion-mnist"


def _args(*argv: str) -> argparse.Namespace:
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(argv))


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_digits_split_is_fixed_stratified_and_32px_rgb():
    args = _args()
    train, val = build_dataset("digits", "", "train", args), build_dataset("digits", "", "validation", args)
    assert (len(train), len(val)) == (1437, 360)
    totals, val_counts = Counter(train.targets + val.targets), Counter(val.targets)
    assert all(abs(val_counts[c] - 0.2 * totals[c]) <= 1 for c in range(10))  # stratified 80/20
    assert build_dataset("digits", "", "val", args).targets == val.targets
    img, label = train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and isinstance(label, int)


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision_raw"])
def test_mnist_like_idx_files(tmp_path, layout):
    images, labels = np.random.default_rng(0).integers(0, 255, (6, 28, 28)), np.arange(6) % 10
    folder = tmp_path if layout == "flat_gz" else tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if layout == "flat_gz" else ""
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels)
    ds = build_dataset("fashion-mnist", str(tmp_path), "validation", _args())
    img, label = ds[3]
    assert len(ds) == 6 and label == 3 and img.size == (32, 32) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img)[2:30, 2:30, 0], images[3])  # padded by 2 pixels


def test_idx_reader_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="not an IDX"):
        read_idx(str(tmp_path / "bad"))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEB), reason="Debian package dataset-fashion-mnist absent")
def test_debian_fashion_mnist_folder():
    ds = build_dataset("fashion-mnist", FASHION_MNIST_DEB, "validation", _args())
    assert len(ds) == 10000 and Counter(ds.targets)[0] == 1000


@pytest.mark.parametrize("name, folder", [("torch/cifar10", "cifar-10-batches-py"),
                                          ("torch/cifar100", "cifar-100-python"),
                                          ("imagenet", "train"), ("mnist", "MNIST")])
def test_missing_dataset_folder_names_it(tmp_path, name, folder):
    with pytest.raises(DatasetError, match=folder):
        build_dataset(name, str(tmp_path / "nowhere"), "train", _args())


def test_imagenet_class_folders(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / split / cls / f"{i}.JPEG")
    train = build_dataset("imagenet", str(tmp_path), "train", _args())
    val = build_dataset("imagenet", str(tmp_path), "validation", _args())
    assert (len(train), len(val)) == (6, 4)
    img, label = val[3]
    assert img.size == (40, 30) and label == 1


def test_imagenet_validation_labels_are_the_training_classes(tmp_path):
    """A val/ without one class keeps the training indices (n03 is 2, not 1); a flat val/ (ILSVRC's layout), a
    class unknown to train/ and --val-split test without test/ (it read train/ and val/ together) are errors."""
    from PIL import Image

    def images(folder, n=2):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.JPEG")

    for cls in ("n01", "n02", "n03"):
        images(tmp_path / "train" / cls)
    for cls in ("n01", "n03"):
        images(tmp_path / "val" / cls)
    val = build_dataset("imagenet", str(tmp_path), "validation", _args())
    assert sorted(label for _, label in (val[i] for i in range(len(val)))) == [0, 0, 2, 2]
    with pytest.raises(DatasetError, match=r"test split not found: .*test"):
        build_dataset("imagenet", str(tmp_path), "test", _args())
    images(tmp_path / "test" / "n04")
    with pytest.raises(DatasetError, match="class folders that .* lacks: n04"):
        build_dataset("imagenet", str(tmp_path), "test", _args())
    images(tmp_path / "flat" / "val", 3)
    (tmp_path / "flat" / "train").symlink_to(tmp_path / "train")
    with pytest.raises(DatasetError, match="no class folders"):
        build_dataset("imagenet", str(tmp_path / "flat"), "validation", _args())


def test_imagenet_labels_are_top_level_class_folders_in_both_splits(tmp_path, caplog):
    """Labels follow train/'s top-level folders at any depth (Tiny ImageNet's <wnid>/images/), an empty training
    class keeps its index in both splits, a stray image in train/ is left out (timm made it class 0), and an
    evaluation split without train/ is numbered on its own only when it has every class."""
    from PIL import Image

    def images(folder, n=2):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.JPEG")

    images(tmp_path / "train" / "n01" / "images")
    (tmp_path / "train" / "n02").mkdir()
    images(tmp_path / "train" / "n03" / "images")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "stray.JPEG")
    images(tmp_path / "val" / "n03")
    train = build_dataset("imagenet", str(tmp_path), "train", _args())
    assert sorted(label for _, label in (train[i] for i in range(len(train)))) == [0, 0, 2, 2]
    assert "1 images outside the class folders (e.g. stray.JPEG) are not used" in caplog.text
    val = build_dataset("imagenet", str(tmp_path), "validation", _args())
    assert [val[i][1] for i in range(len(val))] == [2, 2]
    (tmp_path / "only_val").mkdir()
    (tmp_path / "val").rename(tmp_path / "only_val" / "val")
    with pytest.raises(DatasetError, match="1 class folders for --num-classes 3 and there is no .*train"):
        build_dataset("imagenet", str(tmp_path / "only_val"), "validation", _args("--num-classes", "3"))
    val = build_dataset("imagenet", str(tmp_path / "only_val"), "validation", _args("--num-classes", "1"))
    assert [val[i][1] for i in range(len(val))] == [0, 0]


def test_broken_mnist_files_are_one_error(tmp_path):
    """A truncated .gz, a plain file named .gz and images/labels of different lengths each name the file."""
    images, labels = np.zeros((4, 28, 28)), np.arange(3)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DatasetError, match="holds 4 images but .*t10k-labels-idx1-ubyte 3 labels"):
        build_dataset("mnist", str(tmp_path), "validation", _args())
    data = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError, match="images-idx3-ubyte.gz is not a complete gzip file"):
        build_dataset("mnist", str(tmp_path), "validation", _args())
    _write_idx(tmp_path / "plain", images)
    (tmp_path / "plain").rename(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetError, match="not a complete gzip file .*gunzip it"):
        build_dataset("mnist", str(tmp_path), "validation", _args())


def test_mnist_download_fetches_a_missing_labels_file(tmp_path, monkeypatch):
    import torchvision.datasets

    fetched = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda root, train, download: fetched.append(train))
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(DatasetError, match="MNIST not found"):
        build_dataset("mnist", str(tmp_path), "train", _args("--download"))
    assert fetched == [True]


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("svhn", "", "train", _args())


@pytest.mark.parametrize("argv, closest", [
    (["--dataset", "n-mnist", "--in-channels", "2"], "nmnist"),
    (["--dataset", "dvs128gesture", "--in-channels", "2"], "gesture"),
    (["--dataset", "cifar10dvs"], "cifar10-dvs"),
])
def test_a_mistyped_dataset_name_suggests_the_closest_of_both_kinds(argv, closest):
    """A mistyped event-dataset name was reported as a channel mismatch, or as unknown among static datasets only."""
    from engine.validate import check_run_args

    pattern = rf"--dataset: unknown dataset '{argv[1]}'; did you mean {closest}\b.*event datasets: cifar10-dvs"
    with pytest.raises(ConfigError, match=pattern):
        check_run_args(_args(*argv), train=True)
    with pytest.raises(DatasetError, match=rf"did you mean {closest}\b.* event datasets: .*nmnist"):
        build_dataset(argv[1], "", "train", _args())


def test_randaugment_posterize_at_full_magnitude():
    """timm maps magnitude 10 of PosterizeIncreasing to 0 bits, which recent Pillow rejects; we keep it working."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from engine.loaders import allow_zero_bit_posterize

    allow_zero_bit_posterize()
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img)
    assert out.size == img.size and out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_digits_loaders_with_prefetcher_and_mixup():
    from engine.loaders import build_loaders
    from engine.model import resolve_model_args

    args = _args("--dataset", "digits", "--num-classes", "10", "--img-size", "32", "--device", "cpu", "-j", "0",
                 "-b", "16", "-vb", "32", "--mean", "0.3", "--std", "0.3", "--mixup", "0.5", "--crop-pct", "1")
    args.distributed = False
    resolve_model_args(args)
    loaders = build_loaders(args)
    x, y = next(iter(loaders.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16, 10)  # soft targets
    assert loaders.mixup_active and loaders.mixup_fn is None  # mixup in the collate function
    x, y = next(iter(loaders.eval))
    assert x.shape == (32, 3, 32, 32) and y.dtype == torch.int64 and abs(x.mean().item()) < 1.0


def test_event_cutmix_cuts_height_and_width_at_every_step():
    """CutMix on [B, T, C, H, W] clips: one H x W box, the same at every step and polarity, and targets weighted
    by its area (timm alone cuts axes 2 and 3, the steps' channels and the height, with a box drawn for H x W)."""
    from engine.loaders import _event_mixup

    mixup = _event_mixup(dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, mode="batch",
                              label_smoothing=0.0, num_classes=2))
    torch.manual_seed(3)
    for _ in range(5):
        clips = torch.stack([torch.zeros(4, 2, 16, 12), torch.ones(4, 2, 16, 12)])  # sample 0 gets sample 1's box
        mixed, target = mixup(clips.clone(), torch.tensor([0, 1]))
        box = mixed[0] == 1  # [T, C, H, W]
        assert mixed.shape == clips.shape and torch.equal(box, box[:1, :1].expand_as(box))
        rows, cols = box[0, 0].any(1).nonzero(), box[0, 0].any(0).nonzero()
        if len(rows):  # a rectangle
            assert int(box[0, 0].sum()) == len(rows) * len(cols)
        assert float(target[0, 1]) == pytest.approx(float(box[0, 0].float().mean()))


def test_evaluation_shards_cover_every_sample_once_and_need_one_each():
    from engine.loaders import EvalShard, _eval_dataset

    base = list(range(25))
    shards = [EvalShard(base, rank, 7) for rank in range(7)]
    assert sorted(x for shard in shards for x in shard) == base and {len(s) for s in shards} == {3, 4}
    args = _args("--dataset", "digits")
    args.distributed, args.rank, args.world_size = True, 0, 400
    with pytest.raises(ConfigError, match="has 360 samples for 400 processes: .*at most 360 processes"):
        _eval_dataset(args)


def test_an_empty_evaluation_split_is_one_error(monkeypatch):
    import engine.loaders

    monkeypatch.setattr(engine.loaders, "build_dataset", lambda *a: [])
    args = _args("--dataset", "digits")
    args.distributed = False
    with pytest.raises(ConfigError, match="validation split of digits has no samples"):
        engine.loaders._eval_dataset(args)
