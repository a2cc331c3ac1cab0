"""Input discovery: files, recursive folders, videos, list files, clips, keys and torchrun shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinov3_integration.data.inputs import InputError, discover_inputs, kind_of, shard


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for rel in ("photos/a.jpg", "photos/B.PNG", "photos/sub/c.jpeg", "photos/sub/deeper/d.webp", "photos/clip.mp4",
                "photos/notes.txt", "photos/.hidden.jpg", "photos/.cache/e.jpg", "other/a.jpg"):  # fmt: skip
        touch(tmp_path / rel)
    return tmp_path


def test_kinds() -> None:
    assert kind_of("x.JPG") == "image" and kind_of("y.mov") == "video" and kind_of("z.txt") is None


def test_folder_is_searched_recursively_and_sorted(tree: Path) -> None:
    items = discover_inputs([tree / "photos"])
    assert [it.key for it in items] == ["photos/B.PNG", "photos/a.jpg", "photos/clip.mp4", "photos/sub/c.jpeg",
                                        "photos/sub/deeper/d.webp"]  # fmt: skip
    assert [it.kind for it in items] == ["image", "image", "video", "image", "image"]
    assert [it.path for it in items] == sorted(it.path for it in items)
    assert all(Path(it.path).is_absolute() for it in items)


def test_duplicates_removed_and_colliding_keys_made_unique(tree: Path) -> None:
    items = discover_inputs([tree / "photos" / "a.jpg", tree / "other" / "a.jpg", tree / "photos" / "a.jpg"])
    assert len(items) == 2
    keys = [it.key for it in items]
    assert len(set(keys)) == 2 and all(k.startswith("a.jpg-") for k in keys)


def test_list_file(tree: Path) -> None:
    lst = tree / "list.txt"
    lst.write_text("# my inputs\nphotos/a.jpg\n\n  other/a.jpg  \nphotos/sub\nmissing.jpg\n")
    items = discover_inputs([lst])
    names = sorted(Path(it.path).relative_to(tree).as_posix() for it in items)
    assert names == ["missing.jpg", "other/a.jpg", "photos/a.jpg", "photos/sub/c.jpeg", "photos/sub/deeper/d.webp"]
    # listed files that do not exist are kept: extraction reports them as failed inputs


def test_clips_group_folders_of_frames(tree: Path) -> None:
    items = discover_inputs([tree / "photos"], clips=True)
    by_key = {it.key: it for it in items}
    assert set(by_key) == {"photos", "photos/clip.mp4", "photos/sub", "photos/sub/deeper"}
    assert by_key["photos"].kind == "clip" and [Path(f).name for f in by_key["photos"].frames] == ["B.PNG", "a.jpg"]
    assert by_key["photos/clip.mp4"].kind == "video"


def test_output_folder_inside_input_is_skipped(tree: Path) -> None:
    touch(tree / "photos" / "out" / "x.jpg")
    keys = [it.key for it in discover_inputs([tree / "photos"], exclude=[tree / "photos" / "out"])]
    assert "photos/out/x.jpg" not in keys and "photos/a.jpg" in keys


def test_errors_name_the_problem(tree: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_inputs([tree / "nope.jpg"])
    (tree / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images or videos"):
        discover_inputs([tree / "empty"])
    (tree / "blank.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="names no inputs"):
        discover_inputs([tree / "blank.txt"])
    with pytest.raises(InputError, match="no inputs given"):
        discover_inputs([])


def test_shards_are_disjoint_and_complete(tree: Path) -> None:
    items = discover_inputs([tree])
    shards = [shard(items, r, 3) for r in range(3)]
    assert sorted(it.path for s in shards for it in s) == [it.path for it in items]
    assert shards[1] == items[1::3]
    with pytest.raises(ValueError):
        shard(items, 3, 3)
