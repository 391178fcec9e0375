"""The validation split held out of the training images when DATASETS.VAL is empty (ssd/data/split.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from ssd.config import load_config
from ssd.data.build import build_dataset, build_train_val_datasets
from ssd.data.split import holdout_split, relative_names, split_for_validation

NAMES = [f"img_{i:03d}.jpg" for i in range(50)]


def test_split_is_disjoint_complete_and_sized():
    train, val = holdout_split(NAMES, 0.2)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(50))


def test_split_is_the_images_with_the_smallest_name_hashes():
    """Derived independently: sort the names by their SHA-1 and take the first 20%."""
    digest = {name: int(hashlib.sha1(name.encode()).hexdigest()[:16], 16) for name in NAMES}
    expected = sorted(NAMES.index(n) for n in sorted(NAMES, key=digest.get)[:10])
    assert holdout_split(NAMES, 0.2)[1] == expected


def test_split_does_not_depend_on_the_order_of_the_images():
    shuffled = NAMES[::-1]
    _, val = holdout_split(NAMES, 0.3)
    _, val_shuffled = holdout_split(shuffled, 0.3)
    assert {NAMES[i] for i in val} == {shuffled[i] for i in val_shuffled}


def test_split_keeps_one_image_on_each_side_and_refuses_nonsense():
    assert holdout_split(["a", "b"], 0.01) == ([0], [1]) or holdout_split(["a", "b"], 0.01) == ([1], [0])
    assert len(holdout_split(["a", "b", "c"], 0.99)[0]) == 1
    with pytest.raises(ValueError, match="DATASETS.VAL"):
        holdout_split(["a"], 0.2)
    with pytest.raises(ValueError, match="VAL_FRACTION"):
        holdout_split(NAMES, 1.0)


def synthetic_cfg(*opts):
    return load_config(
        opts=[
            "DATASETS.REGISTER", "('split_train:synthetic:20:5:96', 'split_test:synthetic:6:9:96')",
            "DATASETS.TRAIN", "('split_train',)", "DATASETS.TEST", "('split_test',)", *opts,
        ]
    )  # fmt: skip


def test_empty_val_holds_out_training_images_never_the_test_set(caplog):
    cfg = synthetic_cfg("DATASETS.VAL_FRACTION", "0.25")
    with caplog.at_level("INFO"):
        train, val = build_train_val_datasets(cfg)
    assert (len(train), len(val)) == (15, 5)
    train_files = {train.get_annotation(i)["file_name"] for i in range(len(train))}
    val_files = {val.get_annotation(i)["file_name"] for i in range(len(val))}
    assert train_files.isdisjoint(val_files) and len(train_files | val_files) == 20
    assert not val.dataset.is_train and train.dataset.is_train  # validation images are not augmented
    assert "holding out 5 of the 20 training images" in caplog.text
    # The same split twice (another process, a resumed run).
    _, again = build_train_val_datasets(cfg)
    assert [again.get_annotation(i)["file_name"] for i in range(len(again))] == [
        val.get_annotation(i)["file_name"] for i in range(len(val))
    ]


def test_named_val_and_zero_fraction():
    train, val = build_train_val_datasets(synthetic_cfg("DATASETS.VAL", "('split_test',)"))
    assert (len(train), len(val)) == (20, 6)
    train, val = build_train_val_datasets(synthetic_cfg("DATASETS.VAL_FRACTION", "0.0"))
    assert len(train) == 20 and val is None


def test_holdout_is_capped_at_max_images_and_the_rest_stays_in_training():
    names = [f"img_{i:04d}.jpg" for i in range(1000)]
    train, val = holdout_split(names, 0.2, max_images=30)
    assert len(val) == 30 and len(train) == 970 and set(train).isdisjoint(val)
    # The 30 held out are the 30 smallest SHA-1 hashes of the names (computed here independently).
    digest = {i: hashlib.sha1(n.encode()).digest()[:8] for i, n in enumerate(names)}
    assert val == sorted(sorted(digest, key=digest.get)[:30])
    assert len(holdout_split(names, 0.02, max_images=30)[1]) == 20  # below the cap: the fraction applies
    assert len(holdout_split(names, 0.2, max_images=0)[1]) == 200  # 0 = no cap
    with pytest.raises(ValueError, match="VAL_MAX_IMAGES"):
        holdout_split(names, 0.2, max_images=-1)


def test_config_cap_is_logged(caplog):
    with caplog.at_level("INFO"):
        train, val = build_train_val_datasets(
            synthetic_cfg("DATASETS.VAL_FRACTION", "0.25", "DATASETS.VAL_MAX_IMAGES", "3")
        )
    assert (len(train), len(val)) == (17, 3)
    assert "holding out 3 of the 20 training images" in caplog.text
    assert "capped at DATASETS.VAL_MAX_IMAGES 3" in caplog.text


def test_names_are_relative_to_the_dataset_not_to_where_it_lies():
    assert relative_names(
        ["/work/shared/data/x/JPEGImages/a.jpg", "/work/shared/data/x/JPEGImages/b.jpg"]
    ) == [
        "a.jpg",
        "b.jpg",
    ]
    # The same base name in two folders: the paths below the folder they have in common.
    assert relative_names(["../d/train/1.jpg", "../d/val/1.jpg", "../d/train/2.jpg"]) == [
        "train/1.jpg",
        "val/1.jpg",
        "train/2.jpg",
    ]
    under_work = [f"/work/shared/data/x/{folder}/{i:03d}.jpg" for folder in "ab" for i in range(30)]
    under_repo = [f"../shared/data/x/{folder}/{i:03d}.jpg" for folder in "ab" for i in range(30)]
    assert holdout_split(relative_names(under_work), 0.2) == holdout_split(relative_names(under_repo), 0.2)


def test_bccd_splits_alike_from_an_absolute_and_a_relative_root(bccd_root):
    """The same VOC dataset registered under two spellings of its folder: the same images held out."""
    absolute = bccd_root.resolve()
    relative = os.path.relpath(absolute, Path.cwd())
    cfg = load_config(
        opts=["DATASETS.REGISTER", f"('bccd_abs:voc:{absolute}:train', 'bccd_rel:voc:{relative}:train')",
              "DATASETS.CLASS_NAMES", "('RBC', 'WBC', 'Platelets')"],
    )  # fmt: skip
    held_out = []
    for name in ("bccd_abs", "bccd_rel"):
        dataset = build_dataset(cfg, [name], is_train=True, annotations_only=True)
        _, val = split_for_validation(dataset, 0.2, warn=False)
        held_out.append(sorted(Path(val.get_annotation(i)["file_name"]).name for i in range(len(val))))
    assert held_out[0] == held_out[1] and len(held_out[0]) == round(0.2 * 205)


def sha1_order(names):
    return sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).digest()[:8])


def test_every_class_is_held_out_once_rarest_first_and_training_keeps_it():
    """Class 1 in every image; class 2 in 2 images and class 3 in 3, all after the first 10 in hash order.
    Room for 2 images: the rarest class picks first (its first image in hash order), then class 3."""
    order = sha1_order(NAMES)  # computed here with hashlib, independently of split.py
    rare, medium = order[20:22], order[30:33]
    classes = [[1] + [2] * (i in rare) + [3, 3] * (i in medium) for i in range(50)]
    train, val = holdout_split(NAMES, 0.04, classes_per_image=classes)  # 0.04 * 50 = 2 images
    assert val == sorted([order[20], order[30]])
    assert order[21] in train and order[31] in train  # each class keeps training images
    # A class in one image only stays in training; the rest of val follows the hash order.
    classes[order[40]] = [1, 4]
    _, val = holdout_split(NAMES, 0.2, classes_per_image=classes)
    assert order[40] not in val
    assert val == sorted([order[20], order[30], *order[:8]])
    # The same split whatever order the images are listed in.
    shuffled = list(range(50))[::-1]
    _, val_shuffled = holdout_split(
        [NAMES[i] for i in shuffled], 0.2, classes_per_image=[classes[i] for i in shuffled]
    )
    assert sorted(shuffled[i] for i in val_shuffled) == val


class FakeDataset:
    """Annotations only: image i holds the classes in `classes[i]` (class_names with the background first)."""

    def __init__(self, classes, is_train=False):
        self.classes, self.is_train = classes, is_train
        self.class_names = ("__background__", "a", "b", "c")
        self.contiguous_id_to_dataset_id = {1: 1, 2: 2, 3: 3}

    def __len__(self):
        return len(self.classes)

    def get_annotation(self, index):
        return {"file_name": f"/data/set/img_{index:03d}.jpg", "labels": np.asarray(self.classes[index])}


def test_a_small_or_incomplete_held_out_split_is_warned_about_once(caplog):
    with caplog.at_level("WARNING"):
        split_for_validation(FakeDataset([[1, 2]] * 100), 0.2)  # 20 images, both classes: no warning
        split_for_validation(FakeDataset([[1]] * 30), 0.2, warn=False)  # asked not to warn
        split_for_validation(FakeDataset([[1]] * 30), 0.2)  # 6 images
        split_for_validation(FakeDataset([[1]] * 99 + [[3]]), 0.2)  # 'c' in one image: it trains
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(
        "The held-out validation split has 6 image(s) (DATASETS.VAL_FRACTION 0.2 of 30"
    )
    assert "DATASETS.VAL" in warnings[0] and "model_best.pth" in warnings[0]
    assert warnings[1].startswith("The held-out validation split has 20 image(s) and no box of 'c'")


def test_train_py_splits_warn_once_for_a_tiny_set(caplog):
    with caplog.at_level("WARNING"):
        build_train_val_datasets(synthetic_cfg("DATASETS.VAL_FRACTION", "0.25"))
    assert sum("held-out validation split has 5 image(s)" in r.getMessage() for r in caplog.records) == 1
