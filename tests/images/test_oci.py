"""The pure parts of e2e/cluster/images.py: image names, cache keys and OCI packing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e.cluster import images, wheels
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


def _blob(layout: Path, digest: str) -> bytes:
    data = images.layout_blob(layout, digest).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest, "blob stored under another digest"
    return data


@pytest.mark.parametrize("compress", [False, True])
def test_layout_is_an_oci_image_naming_the_image(tmp_path: Path, compress: bool) -> None:
    layer_bytes = images.layer_tar([FileEntry("hello", b"world", 0o755)])
    layer = images.write_layer(layer_bytes, tmp_path, compress=compress)
    config = images.image_config([layer.diff_id], entrypoint=["/hello"], user="65532:65532", workdir="/tmp")
    layout = tmp_path / "oci"
    digest = images.write_oci_layout(layout, "kubemaas/hello:0.1.0", config, [layer])

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == digest and entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/kubemaas/hello:0.1.0",
        "org.opencontainers.image.ref.name": "0.1.0",
    }
    manifest = json.loads(_blob(layout, digest))
    stored_config = json.loads(_blob(layout, manifest["config"]["digest"]))
    (layer_descriptor,) = manifest["layers"]
    blob = _blob(layout, layer_descriptor["digest"])
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
    assert images.layout_refs(layout) == ["docker.io/kubemaas/hello:0.1.0"]
    assert images.layout_config(layout) == stored_config
    assert not layer.path.exists(), "the staging layer file was moved into the layout"

    # The same image as the tar `ctr images import` reads: the layout's files, nothing else.
    archive = images.write_archive(layout, tmp_path / "hello.tar")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        assert tar.extractfile("index.json").read() == (layout / "index.json").read_bytes()  # type: ignore[union-attr]
    assert names == sorted(str(p.relative_to(layout)) for p in layout.rglob("*") if p.is_file())


def test_same_inputs_give_the_same_image_bytes(tmp_path: Path) -> None:
    def build(directory: Path) -> bytes:
        directory.mkdir()
        layer = images.write_layer(images.layer_tar([FileEntry("a", b"1")]), directory, compress=True)
        config = images.image_config([layer.diff_id], entrypoint=["/a"])
        images.write_oci_layout(directory / "oci", "x:1", config, [layer])
        return images.write_archive(directory / "oci", directory / "x.tar").read_bytes()

    assert build(tmp_path / "one") == build(tmp_path / "two")


def test_layout_refs_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not an OCI image layout"):
        images.layout_refs(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:00"}]}))
    with pytest.raises(ImageError, match=r"io\.containerd\.image\.name"):
        images.layout_refs(tmp_path)


def test_shared_blobs_are_stored_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEMAAS_CACHE_DIR", str(tmp_path))
    shared = images.layer_tar([FileEntry("big", b"x" * 10_000)])

    def build(key: str, own: bytes) -> Path:
        staging = images._staging()
        layers = [
            images.write_layer(shared, staging),
            images.write_layer(images.layer_tar([FileEntry("o", own)]), staging),
        ]
        config = images.image_config([layer.diff_id for layer in layers], entrypoint=["/o"])
        images.write_oci_layout(staging / images.LAYOUT_NAME, f"x/{key}:1", config, layers)
        return images._finish(key, staging, "test")

    one, two = build("one", b"1"), build("two", b"2")
    (shared_digest, _), (own_one, _) = images.layout_layers(one)
    (shared_again, _), (own_two, _) = images.layout_layers(two)
    assert shared_digest == shared_again and own_one != own_two
    assert images.layout_blob(one, shared_digest).stat().st_ino == images.layout_blob(two, shared_digest).stat().st_ino
    assert images.layout_blob(one, own_one).stat().st_nlink == 1
    assert f"{len(shared)} bytes shared" in (two.parent / images.COMPLETE_MARKER).read_text()
    images.prune_cache([two])
    assert images.layout_blob(two, shared_digest).read_bytes() == shared, "the other entry keeps its link"


def test_unknown_image_names_the_known_ones() -> None:
    with pytest.raises(ImageError, match=r"unknown image 'nope'; known: .*pause"):
        images.ensure_image("nope")


def test_wheelhouse_is_the_makefiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    makefile = (images.REPO / "Makefile").read_text()
    # One key for both: the Makefile runs e2e/cluster/wheels.py, images.wheelhouse imports it.
    assert "WHEELS_ROOT := $(HOME)/.cache/kubemaas/wheels" in makefile
    assert "WHEELHOUSE := $(WHEELS_ROOT)/$(shell $(PYTHON) e2e/cluster/wheels.py)" in makefile
    monkeypatch.setattr(images, "WHEELS_ROOT", tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["a"]\n')
    printed = subprocess.run(
        [sys.executable, str(images.REPO / "e2e" / "cluster" / "wheels.py"), str(tmp_path / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    expected = tmp_path / printed
    with pytest.raises(ImageError, match="`make venv` downloads it"):
        images.wheelhouse(tmp_path)
    expected.mkdir()
    (expected / ".complete").touch()
    assert images.wheelhouse(tmp_path) == expected


def test_the_wheel_key_follows_the_dependencies_not_the_tool_settings(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["a"]\n[tool.mypy]\nstrict = true\n')
    first = wheels.key(pyproject)
    pyproject.write_text('[project]\ndependencies = ["a"]\n[tool.mypy]\nstrict = false\n')
    assert wheels.key(pyproject) == first
    for changed in (
        '[project]\ndependencies = ["a", "b"]\n',
        '[project]\ndependencies = ["a"]\noptional-dependencies = {dev = ["c"]}\n',
        '[project]\ndependencies = ["a"]\nrequires-python = ">=3.12"\n',
        '[build-system]\nrequires = ["setuptools"]\n[project]\ndependencies = ["a"]\n',
    ):
        pyproject.write_text(changed)
        assert wheels.key(pyproject) != first, changed


def test_dockerfile_key_follows_what_goes_into_the_image(tmp_path: Path) -> None:
    (tmp_path / "images" / "x").mkdir(parents=True)
    (tmp_path / "images" / "x" / "Dockerfile").write_text("FROM b\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "w-1.0-py3-none-any.whl").touch()
    image = images.DockerfileImage("x", "kubemaas/x:1", "images/x/Dockerfile", ".", ("pyproject.toml", "src"))

    def key(base: str = "b1") -> str:
        return images.dockerfile_key(image, base, wheels, tmp_path)

    first = key()
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "unrelated.txt").write_text("not copied by the Dockerfile")
    assert key() == first, "bytecode and files the Dockerfile does not copy leave the key alone"
    changes = [
        (tmp_path / "src" / "a.py", "a = 2\n"),
        (tmp_path / "images" / "x" / "Dockerfile", "FROM b\nUSER 1:1\n"),
        (tmp_path / "pyproject.toml", "[project]\nname = 'x'\n"),
        (wheels / "w-1.1-py3-none-any.whl", ""),
    ]
    seen = {first, key("b2")}
    for path, text in changes:
        path.write_text(text)
        seen.add(key())
    assert len(seen) == len(changes) + 2


def test_buildah_dir_output_becomes_a_named_oci_layout(tmp_path: Path) -> None:
    source = tmp_path / "dir"
    source.mkdir()
    layer_bytes = images.layer_tar([FileEntry("x", b"1")])
    config = images.canonical_json(images.image_config([], entrypoint=["/x"]))
    digests = {}
    for name, data in (("layer", layer_bytes), ("config", config)):
        digests[name] = f"sha256:{hashlib.sha256(data).hexdigest()}"
        (source / digests[name][7:]).write_bytes(data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": images.MEDIA_MANIFEST,
        "config": {"mediaType": images.MEDIA_CONFIG, "digest": digests["config"], "size": len(config)},
        "layers": [{"mediaType": images.MEDIA_LAYER, "digest": digests["layer"], "size": len(layer_bytes)}],
    }
    (source / "manifest.json").write_text(json.dumps(manifest))
    layout = tmp_path / "oci"
    digest = images.pack_dir_image(source, layout, "kubemaas/x:0.1.0")
    assert digest == f"sha256:{hashlib.sha256((source / 'manifest.json').read_bytes()).hexdigest()}"
    assert images.layout_refs(layout) == ["docker.io/kubemaas/x:0.1.0"]
    assert images.layout_layers(layout) == [(digests["layer"], len(layer_bytes))]
    assert images.layout_config(layout)["config"]["Entrypoint"] == ["/x"]
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    (source / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ImageError, match="expected an OCI manifest"):
        images.pack_dir_image(source, tmp_path / "again", "kubemaas/x:0.1.0")


def test_prune_keeps_current_archives_and_builds_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEMAAS_CACHE_DIR", str(tmp_path))
    root = images.images_root()
    for name in ("current", "stale", ".partial-123"):
        (root / name).mkdir(parents=True)
        (root / name / images.LAYOUT_NAME).mkdir()
        (root / name / images.COMPLETE_MARKER).touch()
    (root / "trainer-abc.failed.log").touch()
    (root / "recent").mkdir()
    (root / "recent" / images.COMPLETE_MARKER).touch()
    day_ago = time.time() - images.PRUNE_UNUSED_SECONDS - 60
    for path in (root / "stale" / images.COMPLETE_MARKER, root / "trainer-abc.failed.log"):
        os.utime(path, (day_ago, day_ago))
    removed = images.prune_cache([root / "current" / images.LAYOUT_NAME])
    assert sorted(p.name for p in removed) == ["stale", "trainer-abc.failed.log"]
    assert sorted(p.name for p in root.iterdir()) == [".partial-123", "current", "recent"], "used within the hour"


def test_layout_tar_leaves_out_blobs_the_importer_holds(tmp_path: Path) -> None:
    layer = images.write_layer(images.layer_tar([FileEntry("a", b"1")]), tmp_path)
    images.write_oci_layout(tmp_path / "oci", "x:1", images.image_config([layer.diff_id], entrypoint=["/a"]), [layer])
    buffer = io.BytesIO()
    images.write_layout_tar(tmp_path / "oci", buffer, frozenset({layer.blob.digest}))
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        names = tar.getnames()
    assert f"blobs/sha256/{layer.blob.digest[7:]}" not in names
    assert "index.json" in names and len(names) == 4  # oci-layout, index, manifest, config


def test_an_import_that_would_not_fit_on_the_disk_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, small = ("sha256:" + "a" * 64, 5 * 1024**3), ("sha256:" + "b" * 64, 1024**2)
    assert images.import_space_needed([big, small], frozenset()) == 2 * (big[1] + small[1]) + images.IMPORT_DISK_MARGIN
    assert images.import_space_needed([big, small], frozenset({big[0]})) == 2 * small[1] + images.IMPORT_DISK_MARGIN

    layer = images.write_layer(images.layer_tar([FileEntry("a", b"1" * 4096)]), tmp_path)
    layout = tmp_path / "oci"
    images.write_oci_layout(layout, "x:1", images.image_config([layer.diff_id], entrypoint=["/a"]), [layer])
    ctr = tmp_path / "ctr"  # lists no content and records any import it is asked for
    ctr.write_text(f'#!/bin/sh\ncase "$*" in *import*) touch {tmp_path}/imported;; esac\n')
    ctr.chmod(0o755)
    # The margin is free, but not the layer twice beside it.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=images.IMPORT_DISK_MARGIN))
    with pytest.raises(
        ImageError, match=r"importing docker.io/library/x:1 into the node needs about 2\.0 GiB free .* has 2\.0 GiB"
    ):
        images.import_images([layout], [str(ctr)], store=tmp_path)
    assert not (tmp_path / "imported").exists()


REPO_CONTEXT_IMAGES = [image for image in images.DOCKERFILE_IMAGES.values() if image.context == "."]


@pytest.mark.parametrize("image", REPO_CONTEXT_IMAGES, ids=lambda image: image.name)
def test_an_image_key_covers_exactly_what_its_dockerfile_copies_and_not_the_readme(
    image: images.DockerfileImage,
) -> None:
    # The key must change with every file that goes into the image (a stale image would be reused) and with
    # nothing else: the project README was an input once, and a documentation edit rebuilt the 6 GB trainer.
    repo = Path(__file__).resolve().parents[2]
    copied = {
        source.rstrip("/")
        for line in (repo / image.dockerfile).read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert copied == set(image.inputs), image.dockerfile
    assert "README.md" not in copied


def test_an_image_id_that_no_name_points_at_any_more_is_dropped_and_the_current_ones_kept() -> None:
    """What `ctr -n k8s.io images ls` showed on this machine's node after two rebuilds: the ids of the old
    operator, model-loader and trainer (6 GB) kept every layer of those images alive."""
    listing = """REF TYPE DIGEST SIZE PLATFORMS LABELS
docker.io/kubemaas/operator:0.1.0 application/vnd.oci.image.manifest.v1+json sha256:972f 379.3 MiB linux/amd64 -
docker.io/kubemaas/trainer:0.1.0 application/vnd.oci.image.manifest.v1+json sha256:01e9 5.7 GiB linux/amd64 -
localhost/kubemaas/pause:1.0 application/vnd.oci.image.manifest.v1+json sha256:e47a 1.6 MiB linux/amd64 -
sha256:0fc6d001 application/vnd.oci.image.manifest.v1+json sha256:e47a 1.6 MiB linux/amd64 managed
sha256:a2d5b538 application/vnd.oci.image.manifest.v1+json sha256:0631 379.2 MiB linux/amd64 managed
sha256:fe16b2b9 application/vnd.oci.image.manifest.v1+json sha256:3fdd 5.7 GiB linux/amd64 managed
"""
    assert images.stale_image_ids(listing) == ["sha256:a2d5b538", "sha256:fe16b2b9"]
    assert images.stale_image_ids("REF TYPE DIGEST SIZE PLATFORMS LABELS\n") == []
