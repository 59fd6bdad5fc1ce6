from __future__ import annotations

import inspect
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from imageindex.errors import ConfigError, SourceError
from imageindex.sources import LocalSource, local_path_from_uri, open_source


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _write(root / "a.jpg", b"a")
    _write(root / "B.JPG", b"bb")
    _write(root / "notes.txt")
    _write(root / "sub" / "c.png", b"ccc")
    _write(root / "sub" / "deeper" / "d.WebP", b"dddd")
    _write(root / "sub" / "deeper" / "e.tiff")
    _write(root / "sub" / "readme.md")
    _write(root / ".hidden.jpg")
    _write(root / ".thumbs" / "f.jpg")
    _write(root / "noext")
    return root


def keys(source) -> list[str]:
    return [e.key for e in source.iter_files()]


def test_lists_images_recursively_case_insensitive_skipping_hidden(tree: Path):
    src = open_source(str(tree))
    got = keys(src)
    assert sorted(got) == ["B.JPG", "a.jpg", "sub/c.png", "sub/deeper/d.WebP", "sub/deeper/e.tiff"]
    # Deterministic order, not just the same set.
    assert got == keys(src)


def test_entry_fields(tree: Path):
    entries = {e.key: e for e in open_source(str(tree)).iter_files()}
    e = entries["sub/c.png"]
    st = (tree / "sub" / "c.png").stat()
    assert e.uri == (tree / "sub" / "c.png").as_uri()
    assert e.size == 3
    assert e.mtime == st.st_mtime
    assert e.fingerprint == f"stat:3-{st.st_mtime_ns}"
    assert e.file_name == "c.png"


def test_iter_files_is_a_lazy_generator(tree: Path):
    src = open_source(str(tree))
    it = src.iter_files()
    assert inspect.isgenerator(it)
    first = next(it)
    assert first.key in {"B.JPG", "a.jpg"}
    it.close()


def test_streaming_does_not_list_everything_first(tmp_path: Path, monkeypatch):
    root = tmp_path / "many"
    for i in range(5):
        _write(root / f"d{i}" / "x.jpg")
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path):
        scanned.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    it = open_source(str(root)).iter_files()
    assert next(it).key == "d0/x.jpg"
    # The root and the first subfolder only: the rest is read as the caller consumes.
    assert len(scanned) == 2
    assert len(list(it)) == 4


def test_open_source_forms_agree(tree: Path, monkeypatch):
    by_path = open_source(str(tree))
    by_uri = open_source(tree.as_uri())
    monkeypatch.chdir(tree.parent)
    by_relative = open_source("photos")
    assert by_path.uri == by_uri.uri == by_relative.uri == tree.as_uri()
    assert keys(by_path) == keys(by_uri) == keys(by_relative)


def test_non_ascii_and_space_names_round_trip(tmp_path: Path):
    root = tmp_path / "fotos été"
    path = _write(root / "ça va" / "naïve 写真 #1%.jpg", b"payload")
    (entry,) = open_source(str(root)).iter_files()
    assert entry.key == "ça va/naïve 写真 #1%.jpg"  # keys stay raw
    assert " " not in entry.uri and "é" not in entry.uri  # uris are percent-encoded
    assert Path(unquote(urlsplit(entry.uri).path)) == path
    assert local_path_from_uri(entry.uri) == path
    assert open_source(root.as_uri()).read_bytes(entry.uri) == b"payload"


def test_symlinks_files_listed_directories_not_followed(tmp_path: Path):
    root = tmp_path / "root"
    outside = _write(tmp_path / "outside" / "o.jpg", b"o")
    _write(root / "real" / "r.jpg")
    (root / "link.jpg").symlink_to(outside)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "nope.jpg")
    src = open_source(str(root))
    assert sorted(keys(src)) == ["link.jpg", "real/r.jpg"]
    assert src.read_bytes((root / "link.jpg").as_uri()) == b"o"


def test_fingerprints_stat_vs_sha256(tmp_path: Path):
    root = tmp_path / "fp"
    path = _write(root / "img.png", b"one")

    def fps():
        (s,) = open_source(str(root)).iter_files()
        (h,) = open_source(str(root), fingerprint="sha256").iter_files()
        return s.fingerprint, h.fingerprint

    stat0, sha0 = fps()
    assert stat0.startswith("stat:3-")
    assert sha0 == "sha256:7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    stat1, sha1 = fps()
    assert stat1 != stat0
    assert sha1 == sha0

    path.write_bytes(b"two")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    stat2, sha2 = fps()
    assert stat2 != stat1
    assert sha2 != sha1


def test_unknown_fingerprint_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="md5"):
        open_source(str(tmp_path), fingerprint="md5")


def test_missing_root(tmp_path: Path):
    missing = tmp_path / "not-mounted"
    src = open_source(str(missing))
    with pytest.raises(SourceError, match="does not exist or is not mounted") as exc:
        src.check_available()
    assert str(missing) in str(exc.value)
    with pytest.raises(SourceError, match=str(missing)):
        list(src.iter_files())


def test_root_is_a_file(tmp_path: Path):
    f = _write(tmp_path / "file.jpg")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(str(f)).check_available()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_subfolder_is_an_error_not_a_skip(tree: Path):
    locked = tree / "sub" / "deeper"
    locked.chmod(0)
    try:
        with pytest.raises(SourceError, match="deeper"):
            list(open_source(str(tree)).iter_files())
    finally:
        locked.chmod(0o755)


def test_unreadable_subfolder_error_via_scandir(tree: Path, monkeypatch):
    # Same as above, for runs as root (where chmod does not lock anything).
    real_scandir = os.scandir

    def deny(path):
        if str(path).endswith("deeper"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny)
    with pytest.raises(SourceError, match=r"sub/deeper: permission denied"):
        list(open_source(str(tree)).iter_files())


def test_read_bytes_refuses_outside_root(tree: Path, tmp_path: Path):
    secret = _write(tmp_path / "secret.jpg", b"s")
    src = open_source(str(tree))
    assert src.read_bytes((tree / "a.jpg").as_uri()) == b"a"
    assert src.read_bytes(str(tree / "a.jpg")) == b"a"
    for uri in (
        secret.as_uri(),
        str(secret),
        f"{tree.as_uri()}/../secret.jpg",
        str(tree / ".." / "secret.jpg"),
        str(tree.parent / "photos-other" / "x.jpg"),
    ):
        with pytest.raises(SourceError, match="outside the source folder"):
            src.read_bytes(uri)


def test_read_bytes_missing_file(tree: Path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tree)).read_bytes(str(tree / "gone.jpg"))


def test_local_path_from_uri():
    assert local_path_from_uri("file:///a/b%20c/d") == Path("/a/b c/d")
    assert local_path_from_uri("file://localhost/a") == Path("/a")
    assert local_path_from_uri("/a/./b/../c") == Path("/a/c")
    assert local_path_from_uri("rel").is_absolute()
    with pytest.raises(ConfigError, match="nas"):
        local_path_from_uri("file://nas/share")


def test_other_schemes_are_refused():
    with pytest.raises(ConfigError, match="gs"):
        open_source("gs://bucket/x")


def test_local_source_repr(tmp_path: Path):
    assert "LocalSource" in repr(LocalSource(tmp_path))


def test_listed_uris_are_exactly_path_as_uri(tmp_path):
    names = ["a b.jpg", "100%.jpg", "ü日本.png", "x#y?.jpg", "semi;colon&+=.jpg", "q'\"t.jpg"]
    sub = tmp_path / "d ir" / "ñ"
    sub.mkdir(parents=True)
    for n in names:
        (sub / n).write_bytes(b"x")
    got = {e.key: e.uri for e in LocalSource(tmp_path).iter_files()}
    assert got == {f"d ir/ñ/{n}": (sub / n).as_uri() for n in names}
    # and they read back through the same source
    src = LocalSource(tmp_path)
    assert all(src.read_bytes(u) == b"x" for u in got.values())
