"""The pure parts of e2e/cluster/images.py: image names, cache keys and OCI packing."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from e2e.cluster import images
from e2e.cluster.images import FileEntry, ImageError


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("kubemaas/trainer:0.1.0", "docker.io/kubemaas/trainer:0.1.0"),
        ("busybox", "docker.io/library/busybox:latest"),
        ("localhost/kubemaas/pause:1.0", "localhost/kubemaas/pause:1.0"),
        ("nvcr.io/nvidia/tritonserver:24.10-py3", "nvcr.io/nvidia/tritonserver:24.10-py3"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
        ("a/b@sha256:" + "0" * 64, "docker.io/a/b@sha256:" + "0" * 64),
    ],
)
def test_names_are_normalized_as_the_cri_plugin_looks_them_up(ref: str, full: str) -> None:
    assert images.normalize_ref(ref) == full
    assert images.normalize_ref(full) == full


@pytest.mark.parametrize("ref", ["", "Kubemaas/x", "a:b:c", "/x", "x/", "x y", "x@sha256:abc", "x:-tag"])
def test_malformed_names_are_refused_with_the_name(ref: str) -> None:
    with pytest.raises(ImageError, match="not an image reference"):
        images.normalize_ref(ref)


def test_the_pause_image_name_is_already_fully_qualified() -> None:
    # containerd's sandbox_image and the import annotation must be the same string.
    assert images.normalize_ref(images.PAUSE_IMAGE) == images.PAUSE_IMAGE


def test_content_key_changes_with_any_byte_name_or_boundary() -> None:
    base = images.content_key([("a", b"12"), ("b", b"3")])
    assert base == images.content_key([("a", b"12"), ("b", b"3")])
    assert base != images.content_key([("a", b"12"), ("b", b"4")])
    assert base != images.content_key([("a", b"12"), ("c", b"3")])
    assert base != images.content_key([("a", b"1"), ("b", b"23")])
    assert len(base) == 16


def test_tree_parts_skip_bytecode_and_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / "stray.pyc").write_bytes(b"\0")
    assert images.tree_parts(tmp_path, "src/") == [("src/pkg/m.py", b"x = 1\n")]


def test_layer_tar_is_reproducible_with_parents_and_modes() -> None:
    entries = [FileEntry("usr/bin/tool", b"#!", 0o755), FileEntry("etc/x.conf", b"a=1")]
    data = images.layer_tar(entries)
    assert data == images.layer_tar(list(reversed(entries)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["etc", "usr", "usr/bin", "etc/x.conf", "usr/bin/tool"]
    assert members["usr/bin/tool"].mode == 0o755 and members["etc/x.conf"].mode == 0o644
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert member is not None
    data = member.read()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest, "blob stored under another digest"
    return data


@pytest.mark.parametrize("compress", [False, True])
def test_archive_is_an_oci_layout_naming_the_image(tmp_path: Path, compress: bool) -> None:
    layer_bytes = images.layer_tar([FileEntry("hello", b"world", 0o755)])
    layer = images.write_layer(layer_bytes, tmp_path, compress=compress)
    config = images.image_config([layer.diff_id], entrypoint=["/hello"], user="65532:65532", workdir="/tmp")
    archive = tmp_path / "image.oci.tar"
    digest = images.write_oci_archive(archive, "kubemaas/hello:0.1.0", config, [layer])

    with tarfile.open(archive) as tar:
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        (entry,) = index["manifests"]
        assert entry["digest"] == digest and entry["platform"] == {"architecture": "amd64", "os": "linux"}
        assert entry["annotations"] == {
            "io.containerd.image.name": "docker.io/kubemaas/hello:0.1.0",
            "org.opencontainers.image.ref.name": "0.1.0",
        }
        manifest = json.loads(_blob(tar, digest))
        stored_config = json.loads(_blob(tar, manifest["config"]["digest"]))
        (layer_descriptor,) = manifest["layers"]
        blob = _blob(tar, layer_descriptor["digest"])
    assert layer_descriptor["mediaType"].endswith("+gzip") == compress
    assert layer_descriptor["size"] == len(blob)
    # The config lists the uncompressed tar's digest, whatever the blob's compression.
    assert stored_config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]
    assert stored_config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": ["/hello"],
        "User": "65532:65532",
        "WorkingDir": "/tmp",
    }
    assert images.archive_refs(archive) == ["docker.io/kubemaas/hello:0.1.0"]
    assert not list(tmp_path.glob(".*partial*")), "the temporary archive was left behind"


def test_same_inputs_give_the_same_archive_bytes(tmp_path: Path) -> None:
    def build(directory: Path) -> bytes:
        directory.mkdir()
        layer = images.write_layer(images.layer_tar([FileEntry("a", b"1")]), directory, compress=True)
        config = images.image_config([layer.diff_id], entrypoint=["/a"])
        images.write_oci_archive(directory / "x.tar", "x:1", config, [layer])
        return (directory / "x.tar").read_bytes()

    assert build(tmp_path / "one") == build(tmp_path / "two")


def test_archive_refs_names_what_is_wrong(tmp_path: Path) -> None:
    not_a_tar = tmp_path / "x.tar"
    not_a_tar.write_text("hello")
    with pytest.raises(ImageError, match="is not an OCI image archive"):
        images.archive_refs(not_a_tar)
    unnamed = tmp_path / "unnamed.tar"
    with tarfile.open(unnamed, "w") as tar:
        data = json.dumps({"manifests": [{"digest": "sha256:00"}]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ImageError, match=r"io\.containerd\.image\.name"):
        images.archive_refs(unnamed)


def test_unknown_image_names_the_known_ones() -> None:
    with pytest.raises(ImageError, match=r"unknown image 'nope'; known: .*pause"):
        images.ensure_image("nope")
