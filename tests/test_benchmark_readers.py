"""Each benchmark read back from a tiny fixture written in its published layout."""

import csv
import io
import shutil
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from configs import pretrain
from input_pipeline.benchmarks import readers, registry
from input_pipeline.benchmarks.readers import DatasetNotFoundError
from input_pipeline.errors import InputDataError
from tests.conftest import imports_tensorflow


def _options(root: Path, **overrides) -> ml_collections.ConfigDict:
    """The zero-shot evaluator's entry (configs/pretrain.py) reading from `root`."""
    options = pretrain.zero_shot_eval(readers.PAPER_BENCHMARKS)
    options.root = str(root)
    options.update(overrides)
    return options


def _read(name: str, options: ml_collections.ConfigDict) -> registry.ZeroShotData:
    return registry.zero_shot_data(name, ml_collections.ConfigDict({"image_size": 8}), options)


def _jpg(path: Path, value: int = 100, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_stanford40_class_order_from_actions_txt_and_prompts_aligned(tmp_path: Path) -> None:
    root = tmp_path / "stanford40"
    # Not alphabetical on purpose: the order must come from the file.
    actions = ["riding_a_bike", "applauding", "cooking"]
    splits = root / "ImageSplits"
    splits.mkdir(parents=True)
    rows = "".join(f"{a}\t2\n" for a in actions)
    (splits / "actions.txt").write_text("action_name\tnumber_of_images\n" + rows)
    for a in actions:
        (splits / f"{a}_test.txt").write_text(f"{a}_001.jpg\n{a}_002.jpg\n")
        (splits / f"{a}_train.txt").write_text(f"{a}_003.jpg\n")
        for i in (1, 2, 3):
            _jpg(root / "JPEGImages" / f"{a}_{i:03d}.jpg")
    (root / "JPEGImages" / "cooking_002.jpg").write_bytes(b"not a jpeg")
    data = _read("stanford40", _options(tmp_path))
    assert data.class_names == tuple(actions)
    assert data.labels.tolist() == [0, 0, 1, 1, 2]
    assert data.unreadable == 1
    assert data.images.shape == (5, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.templates[0].format(data.prompt_names[0]) == "a photo of a person riding a bike"
    assert data.top_k == (1, 3)


def test_kinetics_middle_frame_and_sorted_labels(tmp_path: Path) -> None:
    root = tmp_path / "kinetics400"
    rows = [
        ["riding a bike", "abc", 10, 20, "test"],
        ["abseiling", "xyz", 0, 10, "test"],
        ["abseiling", "gone", 0, 10, "test"],  # no frames extracted
    ]
    _csv(root / "test.csv", ["label", "youtube_id", "time_start", "time_end", "split"], rows)
    for i in range(3):
        _jpg(root / "frames" / "abc_000010_000020" / f"img_{i:05d}.jpg", 50 * i)
    _jpg(root / "frames" / "abseiling" / "xyz_000000_000010.jpg")
    data = _read("kinetics400", _options(tmp_path))
    assert data.class_names == ("abseiling", "riding a bike")
    assert data.labels.tolist() == [1, 0]
    assert data.unreadable == 1  # the clip without frames is reported with the results
    assert data.images[0].mean() == pytest.approx(50, abs=2)  # the middle of three frames
    shutil.rmtree(root / "frames")
    (root / "frames").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no extracted frames"):
        _read("kinetics400", _options(tmp_path))


def _emotic_mat(root: Path) -> None:
    from scipy.io import savemat

    def person(box, categories, age, combined: bool):
        fields = {
            "body_bbox": np.asarray(box, float),
            "annotations_age": {"age": age},
            "annotations_gender": {"gender": "Female"},
        }
        cells = np.asarray(categories, dtype=object)
        if combined:
            fields["combined_categories"] = cells
        else:
            fields["annotations_categories"] = {"categories": cells}
        return fields

    def entries(people_per_image, combined):
        dtype = [("filename", object), ("folder", object), ("person", object)]
        array = np.zeros(len(people_per_image), dtype=dtype)
        for i, people in enumerate(people_per_image):
            plist = np.zeros(len(people), dtype=[(k, object) for k in people[0]])
            for j, p in enumerate(people):
                for k, v in p.items():
                    plist[j][k] = v
            array[i] = (f"img{i}.jpg", "mscoco/images", plist)
        return array

    test_people = [
        [person([0, 0, 4, 8], ["Happiness", "Peace"], "Kid", True)],
        [
            person([0, 0, 8, 8], ["Anger"], "Adult", True),
            person([2, 2, 6, 6], ["Doubt/Confusion"], "Teenager", True),
        ],
    ]
    train_people = [[person([0, 0, 8, 8], ["Fatigue"], "Adult", False)]]
    (root / "Annotations").mkdir(parents=True)
    savemat(
        root / "Annotations" / "Annotations.mat",
        {"test": entries(test_people, True), "train": entries(train_people, False)},
    )
    for i in range(2):
        _jpg(root / "emotic" / "mscoco" / "images" / f"img{i}.jpg", size=(16, 16))


def test_emotic_person_crops_emotions_and_ages(tmp_path: Path) -> None:
    _emotic_mat(tmp_path / "emotic")
    emotion = _read("emotic_emotion", _options(tmp_path))
    names = readers.EMOTIC_CATEGORIES
    assert len(emotion.class_names) == 26
    assert [names[i] for i in emotion.labels] == ["Happiness", "Peace", "Anger", "Doubt/Confusion"]
    assert emotion.templates[0].format(emotion.prompt_names[9]) == (
        "a photo of a person who is feeling doubt or confusion"
    )
    age = _read("emotic_age", _options(tmp_path))
    assert [age.class_names[i] for i in age.labels] == ["Kid", "Adult", "Teenager"]
    assert age.templates[0].format(age.prompt_names[2]) == "a photo of an adult person"
    paper = _read("emotic_age", _options(tmp_path, splits={"emotic": "train"}))
    assert paper.labels.tolist() == [2]


def test_lagenda_body_and_face_boxes_and_age_bins(tmp_path: Path) -> None:
    root = tmp_path / "lagenda"
    header = ["img_name"] + [
        f"{k}_{c}" for k in ("face", "person") for c in ("x0", "y0", "x1", "y1")
    ]
    rows = [
        ["images/a.jpg", 0, 0, 4, 4, 0, 0, 8, 8, "M", 12],
        ["images/b.jpg", 0, 0, 4, 4, -1, -1, -1, -1, "F", 13],  # no body box
        ["images/c.jpg", 0, 0, 4, 4, 0, 0, 8, 8, "F", 20],
    ]
    _csv(root / "annotations.csv", [*header, "gender", "age"], rows)
    for n in "abc":
        _jpg(root / "images" / f"{n}.jpg")
    face = _read("lagenda_face", _options(tmp_path))
    body = _read("lagenda_body", _options(tmp_path))
    assert face.labels.tolist() == [0, 1, 2] and body.labels.tolist() == [0, 2]
    assert face.templates[0].format(face.prompt_names[0]) == "a photo of a kid person"


def test_utkface_age_from_file_name(tmp_path: Path) -> None:
    root = tmp_path / "utkface"
    for name in ("2_0_0_1.jpg.chip.jpg", "9_1_2_2.jpg", "19_0_1_3.jpg", "29_0_0_4.jpg"):
        _jpg(root / name)
    _jpg(root / "61_1_20170109150557335.jpg.chip.jpg")  # a published name missing its race
    data = _read("utkface", _options(tmp_path))
    ages = sorted(zip(data.labels.tolist(), strict=True))
    assert ages == [(0,), (1,), (2,), (3,)]


def _fer_rows(labels: list[int], usages: list[str]) -> list[list]:
    pixels = " ".join(["7"] * 48 * 48)
    return [[label, pixels, usage] for label, usage in zip(labels, usages, strict=True)]


def test_fer2013_split_names_and_paper_variant(tmp_path: Path) -> None:
    rows = _fer_rows([3, 0, 6, 1], ["Training", "PrivateTest", "PrivateTest", "PublicTest"])
    _csv(tmp_path / "fer2013" / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)
    test = _read("fer2013", _options(tmp_path))
    assert test.labels.tolist() == [0, 6] and test.images.shape == (2, 8, 8, 3)
    assert test.templates[0].format(test.prompt_names[0]) == "a photo of an angry looking face"
    assert _read("fer2013", _options(tmp_path, split="val")).labels.tolist() == [1]
    paper = _read("fer2013", _options(tmp_path, splits={"fer2013": "train"}))
    assert paper.labels.tolist() == [3]


def test_ferplus_majority_votes(tmp_path: Path) -> None:
    rows = _fer_rows([0, 0, 0, 0], ["PrivateTest"] * 4)
    _csv(tmp_path / "fer2013" / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)
    header = ["Usage", "Image name", *readers.FERPLUS_CLASSES, "unknown", "NF"]
    votes = [
        [0, 0, 0, 0, 0, 0, 0, 10, 0, 0],  # contempt
        [4, 4, 2, 0, 0, 0, 0, 0, 0, 0],  # no majority: dropped
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: dropped
        [1, 9, 0, 0, 0, 0, 0, 0, 0, 0],  # happiness; the single vote is an outlier
    ]
    new_rows = [["PrivateTest", f"fer{i:07d}.png", *v] for i, v in enumerate(votes)]
    _csv(tmp_path / "ferplus" / "fer2013new.csv", header, new_rows)
    data = _read("ferplus", _options(tmp_path))
    assert data.labels.tolist() == [7, 1]
    assert data.templates[0].format(data.prompt_names[6]) == "a photo of an afraid looking face"


def test_fairface_race_and_age_from_val_csv(tmp_path: Path) -> None:
    root = tmp_path / "fairface"
    rows = [
        ["val/1.jpg", "3-9", "Male", "East Asian", True],
        ["val/2.jpg", "more than 70", "F", "Black", False],
    ]
    _csv(root / "fairface_label_val.csv", ["file", "age", "gender", "race", "service_test"], rows)
    for i in (1, 2):
        _jpg(root / "val" / f"{i}.jpg")
    race = _read("fairface_race", _options(tmp_path))
    assert race.labels.tolist() == [3, 1]
    assert race.templates[0].format(race.prompt_names[3]) == "a photo of an east asian person"
    age = _read("fairface_age", _options(tmp_path))
    assert age.labels.tolist() == [1, 8]


def test_cub_raw_folder_test_split(tmp_path: Path) -> None:
    root = tmp_path / "cub200" / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    images = [(1, classes[0], "a.jpg", 1), (2, classes[1], "b.jpg", 0), (3, classes[0], "c.jpg", 0)]
    (root / "images.txt").write_text("".join(f"{i} {c}/{f}\n" for i, c, f, _ in images))
    (root / "image_class_labels.txt").write_text(
        "".join(f"{i} {c[:3].lstrip('0')}\n" for i, c, _, _ in images)
    )
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in images))
    for _, c, f, _ in images:
        _jpg(root / "images" / c / f)
    data = _read("cub200", _options(tmp_path))
    assert data.labels.tolist() == [1, 0]
    assert data.class_names == ("Black_footed_Albatross", "Laysan_Albatross")


def _tfds_cub(data_dir: Path, file_format: str, shards: dict[str, list[list[tuple]]]) -> None:
    """A caltech_birds2011 build as `tfds build` leaves it: TFDS's registered builder's own
    features and metadata (version, splits, counts), its records serialized by those features,
    shards named by TFDS's template, written as ArrayRecord (a TFRecord build is refused from its
    metadata alone). Rows are (label, grey level); masks are one-pixel PNGs."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("caltech_birds2011", data_dir=str(data_dir), file_format=file_format)
    version_dir = Path(builder.data_dir)
    version_dir.mkdir(parents=True)
    folders = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix=file_format
    )
    splits = []
    for split, rows_per_shard in shards.items():
        for i, rows in enumerate(rows_per_shard):
            name = f"{builder.name}-{split}.{file_format}-{i:05d}-of-{len(rows_per_shard):05d}"
            writer = ArrayRecordWriter(str(version_dir / name), "group_size:1")
            for label, value in rows:
                image, mask = io.BytesIO(), io.BytesIO()
                Image.new("RGB", (8, 8), (value,) * 3).save(image, "JPEG")
                Image.new("L", (1, 1), 1).save(mask, "PNG")
                image.seek(0), mask.seek(0)
                folder = folders[label]
                example = {
                    "image": image,
                    "image/filename": f"CUB_200_2011/images/{folder}/{folder[4:]}_{value}.jpg",
                    "label": label,
                    "label_name": folder[4:].lower(),
                    "bbox": tfds.features.BBox(0.1, 0.2, 0.9, 0.8),
                    "segmentation_mask": mask,
                }
                writer.write(builder.info.features.serialize_example(example))
            writer.close()
        lengths = [len(rows) for rows in rows_per_shard]
        splits.append(tfds.core.SplitInfo(split, lengths, 0, filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_path)


def test_cub_through_tfds_from_an_array_record_build(tmp_path: Path) -> None:
    _tfds_cub(
        tmp_path / "cub200",
        "array_record",
        {  # the test split in two shards, classes out of order; the train split lacks class 0
            "test": [[(1, 20), (0, 40)], [(1, 60)]],
            "train": [[(1, 80)]],
        },
    )
    data = _read("cub200", _options(tmp_path))
    assert data.class_names == ("Black_footed_Albatross", "Laysan_Albatross")  # as classes.txt
    assert data.labels.tolist() == [1, 0, 1]
    assert data.images[:, 0, 0, 0].tolist() == pytest.approx([20, 40, 60], abs=3)
    assert data.templates[0].format(data.prompt_names[1]) == (
        "a photo of a Laysan Albatross, a type of bird."
    )
    with pytest.raises(InputDataError, match="lacks some classes"):
        _read("cub200", _options(tmp_path, split="train"))
    assert "tensorflow" not in sys.modules
    read = f"""
import ml_collections
from input_pipeline.benchmarks import readers
options = ml_collections.ConfigDict({_options(tmp_path).to_dict()!r})
assert len(readers.load("cub200", options, 8)["labels"]) == 3
"""
    assert not imports_tensorflow(read, tmp_path / "check")


def test_cub_tfrecord_build_is_refused_with_the_command_that_converts_it(tmp_path: Path) -> None:
    _tfds_cub(tmp_path / "cub200", "tfrecord", {"test": [[]]})
    with pytest.raises(InputDataError, match=r"tfrecord build.*convert_format.*array_record") as e:
        _read("cub200", _options(tmp_path))
    assert "\n" not in str(e.value)


def test_dataset_folders_match_in_any_case(tmp_path: Path) -> None:
    """`Stanford40/` (as its archive unpacks) and `FER2013/` read like `stanford40/`, `fer2013/`."""
    actions = ["applauding", "cooking"]
    splits = tmp_path / "Stanford40" / "ImageSplits"
    splits.mkdir(parents=True)
    (splits / "actions.txt").write_text("action_name\tnumber_of_images\n" + "".join(
        f"{a}\t1\n" for a in actions))  # fmt: skip
    for a in actions:
        (splits / f"{a}_test.txt").write_text(f"{a}_001.jpg\n")
        _jpg(tmp_path / "Stanford40" / "JPEGImages" / f"{a}_001.jpg")
    assert _read("stanford40", _options(tmp_path)).labels.tolist() == [0, 1]
    _csv(tmp_path / "FER2013" / "fer2013.csv", ["emotion", "pixels", "Usage"],
         _fer_rows([3, 5], ["PrivateTest"] * 2))  # fmt: skip
    assert _read("fer2013", _options(tmp_path)).labels.tolist() == [3, 5]


def test_missing_folder_names_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"stanford40 dataset folder at .*stanford40"):
        _read("stanford40", _options(tmp_path))
    (tmp_path / "fer2013").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"fer2013\.csv"):
        _read("fer2013", _options(tmp_path))


FER_HEADER = ["emotion", "pixels", "Usage"]


def _fer(tmp_path: Path, header: list[str], rows: list[list]) -> ml_collections.ConfigDict:
    _csv(tmp_path / "fer2013" / "fer2013.csv", header, rows)
    return _options(tmp_path)


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["emotion", "pixel", "Usage"], [0, "7", "PrivateTest"],
         r"fer2013\.csv: no column 'pixels' .*it has emotion, pixel, Usage\)$"),
        (FER_HEADER, [0, " ".join(["7"] * 2000), "PrivateTest"],
         r"fer2013\.csv, line 3, pixels: expected 2304 grey values .*, got 2000$"),
        (FER_HEADER, [0, " ".join(["7"] * 2303 + ["256"]), "PrivateTest"],
         r"fer2013\.csv, line 3, pixels: .*got '256'$"),
        (FER_HEADER, ["x", " ".join(["7"] * 2304), "PrivateTest"],
         r"fer2013\.csv, line 3, emotion='x': expected an integer from 0 to 6$"),
        (FER_HEADER, [9, " ".join(["7"] * 2304), "PrivateTest"],
         r"fer2013\.csv, line 3, emotion='9': expected an integer from 0 to 6$"),
        (FER_HEADER, [0, " ".join(["7"] * 2304), "PrivateTest", "extra"],
         r"fer2013\.csv, line 3: 4 fields, the header has 3$"),
    ],
)  # fmt: skip
def test_fer2013_malformed_file_named_with_line_and_field(
    tmp_path: Path, header: list[str], row: list, message: str
) -> None:
    """The second data row (line 3) is the bad one; a bad column is named before any row."""
    options = _fer(tmp_path, header, [*_fer_rows([1], ["PrivateTest"]), row])
    with pytest.raises(InputDataError, match=message) as error:
        _read("fer2013", options)
    assert not isinstance(error.value, DatasetNotFoundError)  # not skipped as absent: refused
    assert "\n" not in str(error.value)


def test_fer2013_rows_of_other_splits_are_not_read(tmp_path: Path) -> None:
    rows = [*_fer_rows([1], ["PrivateTest"]), ["x", "cut short", "Training"]]
    assert _read("fer2013", _fer(tmp_path, FER_HEADER, rows)).labels.tolist() == [1]


def test_ferplus_bad_vote_and_missing_column_named(tmp_path: Path) -> None:
    _csv(tmp_path / "fer2013" / "fer2013.csv", FER_HEADER, _fer_rows([0], ["PrivateTest"]))
    header = ["Usage", "Image name", *readers.FERPLUS_CLASSES, "unknown", "NF"]
    votes = ["PrivateTest", "fer0000000.png", 0, 10, 0, 0, 0, 0, 0, "many", 0, 0]
    _csv(tmp_path / "ferplus" / "fer2013new.csv", header, [votes])
    with pytest.raises(InputDataError, match=r"fer2013new\.csv, line 2, contempt='many': expect"):
        _read("ferplus", _options(tmp_path))
    _csv(tmp_path / "ferplus" / "fer2013new.csv", header[:-1], [votes[:-1]])
    with pytest.raises(InputDataError, match=r"fer2013new\.csv: no column 'NF'"):
        _read("ferplus", _options(tmp_path))


def test_lagenda_bad_box_and_missing_column_named(tmp_path: Path) -> None:
    root = tmp_path / "lagenda"
    header = ["img_name"] + [
        f"{k}_{c}" for k in ("face", "person") for c in ("x0", "y0", "x1", "y1")
    ]
    rows = [["images/a.jpg", 0, 0, 4, 4, 0, 0, "eight", 8, "M", 12]]
    _csv(root / "annotations.csv", [*header, "gender", "age"], rows)
    _jpg(root / "images" / "a.jpg")
    assert _read("lagenda_face", _options(tmp_path)).labels.tolist() == [0]
    with pytest.raises(InputDataError, match=r"annotations\.csv, line 2, person_x1='eight'"):
        _read("lagenda_body", _options(tmp_path))
    _csv(root / "annotations.csv", [*header, "gender"], [row[:-1] for row in rows])
    with pytest.raises(InputDataError, match=r"annotations\.csv: no column 'age'"):
        _read("lagenda_face", _options(tmp_path))


def test_fairface_unknown_class_named(tmp_path: Path) -> None:
    root = tmp_path / "fairface"
    rows = [["val/1.jpg", "3-9", "Male", "East asian", True]]
    _csv(root / "fairface_label_val.csv", ["file", "age", "gender", "race", "service_test"], rows)
    _jpg(root / "val" / "1.jpg")
    assert _read("fairface_age", _options(tmp_path)).labels.tolist() == [1]
    with pytest.raises(InputDataError, match=r"label_val\.csv, line 2, race='East asian': exp"):
        _read("fairface_race", _options(tmp_path))


def test_kinetics_bad_time_named(tmp_path: Path) -> None:
    root = tmp_path / "kinetics400"
    header = ["label", "youtube_id", "time_start", "time_end", "split"]
    _csv(root / "test.csv", header, [["abseiling", "xyz", "0", "ten", "test"]])
    (root / "frames").mkdir()
    with pytest.raises(InputDataError, match=r"test\.csv, line 2, time_end='ten': expected an int"):
        _read("kinetics400", _options(tmp_path))


def test_cub_malformed_tables_named(tmp_path: Path) -> None:
    root = tmp_path / "cub200"
    root.mkdir()
    (root / "classes.txt").write_text("1 001.Albatross\n")
    (root / "images.txt").write_text("1 001.Albatross/a.jpg\n2 001.Albatross/b.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 7\n")
    (root / "train_test_split.txt").write_text("1 0\n2 0\n")
    with pytest.raises(InputDataError, match=r"image_class_labels\.txt: image 2: '7', expected a"):
        _read("cub200", _options(tmp_path))
    (root / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(InputDataError, match=r"image_class_labels\.txt, line 2: expected '<id> "):
        _read("cub200", _options(tmp_path))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n")
    (root / "train_test_split.txt").write_text("1 0\n")
    with pytest.raises(InputDataError, match=r"train_test_split\.txt: image 2: no line, expected"):
        _read("cub200", _options(tmp_path))


def test_emotic_malformed_annotations_named(tmp_path: Path) -> None:
    _emotic_mat(tmp_path / "emotic")
    with pytest.raises(InputDataError, match=r"Annotations\.mat: no struct 'val' \(it has test"):
        _read("emotic_age", _options(tmp_path, split="val"))
    (tmp_path / "emotic" / "Annotations" / "Annotations.mat").write_bytes(b"not a mat file" * 9)
    with pytest.raises(InputDataError, match=r"Annotations\.mat: not a MATLAB file"):
        _read("emotic_age", _options(tmp_path))


def test_csv_not_text_named(tmp_path: Path) -> None:
    (tmp_path / "fer2013").mkdir()
    (tmp_path / "fer2013" / "fer2013.csv").write_bytes(b"emotion,pixels,Usage\n\xff\xfe\x00\n")
    with pytest.raises(InputDataError, match=r"fer2013\.csv: not a readable CSV file"):
        _read("fer2013", _options(tmp_path))
