"""The validation split held out of the training images when DATASETS.VAL is empty (ssd/data/split.py)."""

from __future__ import annotations

import hashlib

import pytest

from ssd.config import load_config
from ssd.data.build import build_train_val_datasets
from ssd.data.split import holdout_split

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
