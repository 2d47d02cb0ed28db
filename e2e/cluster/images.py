"""Container images for the real node, without Docker or a registry (issue 14, deliverable 2).

Nothing can be pulled on these machines, so every image the node runs is made here and imported into
its containerd with `ctr images import`:

* ``pause``: the sandbox image, a tiny static Go program (modules/pause) in one layer (tar + JSON here).
* ``base``: Debian bookworm's python3 from debootstrap --variant=minbase, one layer; buildah builds on it.
* ``operator``, ``model-loader``, ``trainer``, ``triton-python``: the repo's Dockerfiles built by buildah
  (no network, pip offline from the Makefile's wheel cache), named as the chart and examples name them.

Each image is cached as an OCI image layout directory, ``<cache>/images/<key>/oci/``, where the key hashes
everything that decides its bytes, so a second build is a lookup. Blobs that several images share (the base,
torch) are hard links to one file. `import_images` streams a layout into `ctr images import` through a pipe;
the index names the image both with containerd's full-name annotation and the OCI tag annotation.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import debian
from .versions import CLUSTER_DIR, cache_root
from .wheels import key as wheels_key

# The node's sandbox image (containerd's `sandbox_image`); the name is ours, nothing pulls it.
PAUSE_IMAGE = "localhost/kubemaas/pause:1.0"
# Bump when the packing below changes the images' bytes or layout, so old cache entries are not reused.
PACKING_VERSION = "1"
PAUSE_MODULE = CLUSTER_DIR / "modules" / "pause"
LAYOUT_NAME = "oci"  # each cache entry: <key>/oci/, an OCI image layout directory
COMPLETE_MARKER = ".complete"
TAIL_LINES = 40

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd's CRI plugin resolves image names in this namespace; `ctr` must import there too.
CRI_NAMESPACE = "k8s.io"


class ImageError(RuntimeError):
    """An image failed to build or import; the message names the image and the failing step."""


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Names and keys (pure)


_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def normalize_ref(ref: str) -> str:
    """The fully qualified name containerd's CRI plugin looks an image up by (Docker's rules).

    `kubemaas/trainer:0.1.0` -> `docker.io/kubemaas/trainer:0.1.0`, `busybox` -> `docker.io/library/busybox:latest`;
    a first component with a dot or a port, or `localhost`, is a registry and stays.
    """
    rest, at, digest = ref.partition("@")
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain = first
    else:
        domain, path = "docker.io", rest if slash else f"library/{rest}"
    path, colon, tag = path.partition(":")
    if not _PATH.fullmatch(path) or (colon and not _TAG.fullmatch(tag)) or (at and not _DIGEST.fullmatch(digest)):
        raise ImageError(f"not an image reference: {ref!r}")
    name = f"{domain}/{path}:{tag or 'latest'}" if colon or not at else f"{domain}/{path}"
    return f"{name}@{digest}" if at else name


def ref_tag(ref: str) -> str:
    """The tag of a normalized reference (the OCI `ref.name` annotation)."""
    last = ref.split("@")[0].rsplit("/", 1)[1]
    return last.partition(":")[2] or "latest"


def content_key(parts: Iterable[tuple[str, bytes]]) -> str:
    """A short hash of named byte strings: the cache key of whatever they go into.

    Names and lengths are hashed with the bytes, so moving bytes between parts changes the key.
    """
    digest = hashlib.sha256(f"kubemaas-images {PACKING_VERSION}\n".encode())
    for name, data in parts:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def tree_parts(root: Path, prefix: str = "") -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every regular file under root, sorted; caches and bytecode excluded."""
    parts = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(p in {"__pycache__", ".mypy_cache", ".pytest_cache"} or p.endswith(".egg-info") for p in relative.parts):
            continue
        if path.is_file() and path.suffix not in {".pyc", ".pyo"}:
            parts.append((f"{prefix}{relative}", path.read_bytes()))
    return parts


# ---------------------------------------------------------------------------------------------------------------
# OCI packing (pure apart from the files it writes)


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob of an OCI image layout."""

    media_type: str
    digest: str  # sha256:<hex>
    size: int

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    """A layer blob on disk; diff_id is the digest of its uncompressed tar (the config lists those)."""

    path: Path
    blob: Blob
    diff_id: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a layer built from memory (small layers such as pause)."""

    path: str  # inside the image, relative (no leading slash)
    data: bytes
    mode: int = 0o644


def layer_tar(entries: Sequence[FileEntry]) -> bytes:
    """A reproducible layer tar: sorted entries, parent directories, owner root, mtime 0."""
    dirs: set[str] = set()
    for entry in entries:
        parts = entry.path.strip("/").split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(dirs):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path.strip("/"))
            info.size, info.mode = len(entry.data), entry.mode
            tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def write_layer(data: bytes, directory: Path, compress: bool = False) -> Layer:
    """Store an uncompressed layer tar (or its gzip, mtime 0 so the bytes are reproducible)."""
    diff_id = f"sha256:{hashlib.sha256(data).hexdigest()}"
    blob_bytes = gzip.compress(data, mtime=0) if compress else data
    blob = Blob(
        MEDIA_LAYER_GZIP if compress else MEDIA_LAYER,
        f"sha256:{hashlib.sha256(blob_bytes).hexdigest()}",
        len(blob_bytes),
    )
    path = directory / blob.digest.split(":")[1]
    path.write_bytes(blob_bytes)
    return Layer(path, blob, diff_id)


def image_config(
    diff_ids: Sequence[str],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "",
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    workdir: str = "",
    created_by: str = "kubemaas e2e/cluster/images.py",
) -> dict[str, Any]:
    """An OCI image config (the fields containerd and the kubelet read). No timestamp: reproducible bytes."""
    config: dict[str, Any] = {"Env": list(env)}
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    if cmd:
        config["Cmd"] = list(cmd)
    if user:
        config["User"] = user
    if workdir:
        config["WorkingDir"] = workdir
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": created_by} for _ in diff_ids],
    }


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_oci_layout(dest: Path, ref: str, config: dict[str, Any], layers: Sequence[Layer]) -> str:
    """Write an OCI image layout directory at dest naming the image `ref`; returns the manifest digest.

    The layers' files are moved into the layout (they are staging files of the caller).
    """
    config_bytes = canonical_json(config)
    config_blob = Blob(MEDIA_CONFIG, f"sha256:{hashlib.sha256(config_bytes).hexdigest()}", len(config_bytes))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    blobs: list[tuple[str, bytes | Path]] = [(config_blob.digest, config_bytes)]
    blobs += [(layer.blob.digest, layer.path) for layer in layers]
    return write_layout(dest, ref, canonical_json(manifest), blobs)


def write_layout(dest: Path, ref: str, manifest_bytes: bytes, blobs: Sequence[tuple[str, bytes | Path]]) -> str:
    """An OCI image layout directory: oci-layout, an index naming the one manifest `ref`, and the blobs.

    The index names the image both ways: containerd's annotation with the full name (what `ctr images import`
    uses) and the OCI tag annotation. Blobs given as files are moved in (renamed, not copied: GBs of torch).
    Returns the manifest digest.
    """
    full = normalize_ref(ref)
    manifest_blob = Blob(MEDIA_MANIFEST, f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}", len(manifest_bytes))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            manifest_blob.descriptor(
                annotations={ANNOTATION_CONTAINERD_NAME: full, ANNOTATION_REF_NAME: ref_tag(full)},
                platform={"architecture": "amd64", "os": "linux"},
            )
        ],
    }
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    (dest / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_bytes(canonical_json(index))
    (blob_dir / manifest_blob.digest[7:]).write_bytes(manifest_bytes)
    for digest, data in blobs:
        target = blob_dir / digest.removeprefix("sha256:")
        if target.exists():  # an image may list the same (e.g. empty) layer twice; store it once
            continue
        if isinstance(data, Path):
            data.rename(target)
        else:
            target.write_bytes(data)
    return manifest_blob.digest


def _read_json(layout: Path, name: str) -> Any:
    try:
        return json.loads((layout / name).read_bytes())
    except (OSError, json.JSONDecodeError) as error:
        raise ImageError(f"{layout} is not an OCI image layout: {error}") from error


def layout_refs(layout: Path) -> list[str]:
    """The image names an OCI layout's index carries (containerd's annotation)."""
    index = _read_json(layout, "index.json")
    refs = [m.get("annotations", {}).get(ANNOTATION_CONTAINERD_NAME) for m in index.get("manifests", [])]
    if not refs or None in refs:
        raise ImageError(f"{layout}: every manifest in index.json needs the {ANNOTATION_CONTAINERD_NAME} annotation")
    return [str(r) for r in refs]


def layout_manifest(layout: Path) -> dict[str, Any]:
    """The manifest of a layout's (single) image."""
    (entry,) = _read_json(layout, "index.json")["manifests"]
    manifest: dict[str, Any] = _read_json(layout, f"blobs/sha256/{entry['digest'][7:]}")
    return manifest


def layout_config(layout: Path) -> dict[str, Any]:
    """The OCI image config of a layout's (single) image: user, entrypoint, env, layers' diff_ids."""
    config: dict[str, Any] = _read_json(layout, f"blobs/sha256/{layout_manifest(layout)['config']['digest'][7:]}")
    return config


def layout_layers(layout: Path) -> list[tuple[str, int]]:
    """(digest, size) of a layout's layers, in order."""
    return [(layer["digest"], layer["size"]) for layer in layout_manifest(layout)["layers"]]


def layout_blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def write_layout_tar(layout: Path, out: io.BufferedIOBase | Any, skip: frozenset[str] = frozenset()) -> None:
    """Stream a layout as the tar `ctr images import` reads (to a pipe or a file): no copy on disk.

    skip: digests of blobs to leave out (the importer's content store has them already).
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            if path.is_file() and f"sha256:{path.name}" not in skip:
                info = tarfile.TarInfo(str(path.relative_to(layout)))
                info.size, info.mode = path.stat().st_size, 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)


# ---------------------------------------------------------------------------------------------------------------
# Building


def images_root() -> Path:
    return cache_root() / "images"


def _cached(key: str) -> Path | None:
    directory = images_root() / key
    if not (directory / COMPLETE_MARKER).exists():
        return None
    layout = directory / LAYOUT_NAME
    legacy = directory / "image.oci.tar"  # what the first version of this module cached: the same blobs in a tar
    if not layout.exists() and legacy.exists():
        unpacked = directory / f".{LAYOUT_NAME}.partial-{os.getpid()}"
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(legacy) as tar:
            tar.extractall(unpacked, filter="data")
        unpacked.rename(layout)
    if not (layout / "index.json").exists():
        return None
    os.utime(directory / COMPLETE_MARKER)  # last use, for prune_cache
    return layout


def _dedupe(layout: Path) -> int:
    """Hard-link blobs other cached images already hold (torch's GBs, the base): stored once on disk.

    Returns the bytes saved. Each entry stays self-contained: removing one never breaks another.
    """
    saved = 0
    others = [entry / LAYOUT_NAME / "blobs" / "sha256" for entry in images_root().iterdir() if entry.is_dir()]
    for blob in (layout / "blobs" / "sha256").iterdir():
        for other_dir in others:
            other = other_dir / blob.name
            if other_dir == blob.parent or not other.exists() or other.stat().st_ino == blob.stat().st_ino:
                continue
            link = blob.with_name(f".{blob.name}.link")
            os.link(other, link)
            saved += blob.stat().st_size
            link.replace(blob)
            break
    return saved


def _finish(key: str, staging: Path, note: str) -> Path:
    """Move a staging directory holding the LAYOUT_NAME layout into the cache under key (atomically)."""
    saved = _dedupe(staging / LAYOUT_NAME)
    (staging / COMPLETE_MARKER).write_text(f"{note}; {saved} bytes shared with other images by hard links\n")
    target = images_root() / key
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target / LAYOUT_NAME


def _staging() -> Path:
    images_root().mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".partial-", dir=images_root()))


def go_env_version() -> str:
    try:
        result = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise ImageError(f"the pause image needs the Go toolchain (`go env GOVERSION` failed: {error})") from error
    return result.stdout.strip()


def pause_key(toolchain: str) -> str:
    return content_key([("toolchain", toolchain.encode()), ("ref", PAUSE_IMAGE.encode()), *tree_parts(PAUSE_MODULE)])


def ensure_pause() -> Path:
    """The pause image: `go build` of modules/pause (static, stripped) in one layer at /pause."""
    key = pause_key(go_env_version())
    if (cached := _cached(key)) is not None:
        return cached
    started = time.monotonic()
    staging = _staging()
    try:
        binary = staging / "pause"
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        command = ["go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(binary), "."]
        result = subprocess.run(command, cwd=PAUSE_MODULE, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(
                f"building the pause program failed (go build exited {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        layer = write_layer(layer_tar([FileEntry("pause", binary.read_bytes(), 0o755)]), staging)
        binary.unlink()
        # 65535: the uid of the upstream pause image; the kubelet overrides it with the pod's runAsUser.
        config = image_config([layer.diff_id], entrypoint=["/pause"], user="65535:65535", env=())
        write_oci_layout(staging / LAYOUT_NAME, PAUSE_IMAGE, config, [layer])
        archive = _finish(key, staging, f"built in {time.monotonic() - started:.1f}s")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {PAUSE_IMAGE} in {time.monotonic() - started:.1f}s: {archive}")
    return archive


# ---------------------------------------------------------------------------------------------------------------
# The Python base: Debian's own python3 in a minbase rootfs


# The base the Dockerfiles build FROM here (passed as --build-arg PYTHON_IMAGE): Debian bookworm's python3
# (3.11.2) in /usr/bin, not the official python:3.11.7-slim-bookworm (3.11.7 in /usr/local), so it gets a name
# of its own instead of impersonating that one.
BASE_IMAGE = "localhost/kubemaas/python:3.11-bookworm"
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
# python-is-python3: the Dockerfiles run `python`; python3-venv: `python -m venv` (ensurepip's wheels);
# libpython3.11: the Triton Python backend stub links libpython3.11.so.1.0 (images/triton-python/Dockerfile.cpu).
# Builds are offline, so whatever a Dockerfile needs from Debian must already be in the base.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "libpython3.11")
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")


def base_key() -> str:
    return content_key(
        [
            ("ref", BASE_IMAGE.encode()),
            ("suite", BASE_SUITE.encode()),
            ("mirror", BASE_MIRROR.encode()),
            ("packages", " ".join(sorted(BASE_PACKAGES)).encode()),
            ("env", "\n".join(BASE_ENV).encode()),
        ]
    )


def _run(what: str, command: Sequence[str], log_path: Path | None = None) -> str:
    """Run a build step; on failure raise ImageError naming the step with the output's tail.

    With log_path the output streams into that file as it comes (a long build can be followed there) and the
    return value is empty; without it the step's stdout is returned.
    """
    stdout = ""
    if log_path is None:
        result = subprocess.run(list(command), capture_output=True, text=True)
        stdout, output, returncode = result.stdout, result.stdout + result.stderr, result.returncode
    else:
        with log_path.open("a") as log_file:
            log_file.write(f"$ {' '.join(command)}\n")
            log_file.flush()
            returncode = subprocess.run(list(command), stdout=log_file, stderr=subprocess.STDOUT).returncode
        output = log_path.read_text(errors="replace")
    if returncode != 0:
        tail = "\n".join(output.splitlines()[-TAIL_LINES:])
        raise ImageError(f"{what} failed: `{' '.join(command)}` exited {returncode}:\n{tail}")
    return stdout


def file_layer(path: Path) -> Layer:
    """A layer from an uncompressed tar already on disk (streamed, not read into memory)."""
    digest = sha256_file(path)
    blob = Blob(MEDIA_LAYER, digest, path.stat().st_size)
    return Layer(path, blob, digest)


def tar_rootfs(root: Path, dest: Path) -> Layer:
    """GNU tar of a root filesystem as one layer: sorted, numeric owners, no atime/ctime records."""
    names = sorted(p.name for p in root.iterdir())
    command = [
        "tar",
        "--create",
        f"--file={dest}",
        f"--directory={root}",
        "--sort=name",
        "--numeric-owner",
        "--xattrs",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        *names,
    ]
    _run("packing the rootfs", command)
    return file_layer(dest)


def _need_build_tools(ref: str) -> None:
    """Install the image build's Debian packages (e2e/cluster/debian.py) before the first build step runs."""
    try:
        debian.ensure("images")
    except debian.PackageError as error:
        raise ImageError(f"building {ref}: {error}") from None
    for program, package in debian.programs_of("images").items():
        if shutil.which(program) is None:
            raise ImageError(f"building {ref} needs {program} (Debian package {package}), which is not on PATH")


def ensure_base() -> Path:
    """The Python base image: debootstrap --variant=minbase with BASE_PACKAGES, one layer."""
    key = base_key()
    if (cached := _cached(key)) is not None:
        return cached
    _need_build_tools(BASE_IMAGE)
    started = time.monotonic()
    staging = _staging()
    build_log = staging / "build.log"
    try:
        root = staging / "rootfs"
        log(f"debootstrap {BASE_SUITE} with {', '.join(BASE_PACKAGES)} (about a minute) ...")
        _run(
            "debootstrap",
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(root),
                BASE_MIRROR,
            ],
            build_log,
        )
        # What a container never needs from the build: the runtime provides /dev; apt's downloads and lists.
        for leftover in ("dev", "var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for child in (root / leftover).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        layer = tar_rootfs(root, staging / "layer.tar")
        shutil.rmtree(root)
        config = image_config(
            [layer.diff_id],
            entrypoint=[],
            cmd=["python3"],
            env=BASE_ENV,
            created_by=f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE}",
        )
        write_oci_layout(staging / LAYOUT_NAME, BASE_IMAGE, config, [layer])
        archive = _finish(key, staging, f"built in {time.monotonic() - started:.1f}s")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {BASE_IMAGE} in {time.monotonic() - started:.0f}s: {archive}")
    return archive


def load_into_buildah(archive: Path, name: str) -> None:
    """Make `name` in buildah's local storage the image of this layout (skipped when it already is)."""
    image_id = layout_manifest(archive)["config"]["digest"].removeprefix("sha256:")
    current = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name], capture_output=True, text=True
    )
    if current.returncode == 0 and current.stdout.strip() == image_id:
        return
    # Through a temporary archive: `buildah pull oci:DIR` names the image after DIR, and a path with a dot
    # component (~/.cache) is not a valid name; `oci-archive:` does not.
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=images_root()) as scratch:
        tarball = write_archive(archive, Path(scratch) / "image.tar")
        pulled = _run(f"loading {name} into buildah", ["buildah", "pull", "--quiet", f"oci-archive:{tarball}"]).strip()
        _run(f"naming {name} in buildah", ["buildah", "tag", pulled.splitlines()[-1], name])


# ---------------------------------------------------------------------------------------------------------------
# The repo's Dockerfiles, built by buildah on the local base, offline from the project's wheel cache

REPO = CLUSTER_DIR.parent.parent
# Where the Makefile's `venv` target downloads every wheel the project needs (its WHEELHOUSE: keyed by the
# first 16 hex digits of pyproject.toml's sha256, complete when `.complete` exists).
WHEELS_ROOT = Path.home() / ".cache" / "kubemaas" / "wheels"
# pip inside a build reads this as /etc/pip.conf (a bind mount that only RUN steps see, not the image).
PIP_OFFLINE_CONF = "[global]\nno-index = true\nfind-links = /wheels\n"
# buildah's name for an image it built, before it is packed under the name the chart uses.
BUILD_TAG_PREFIX = "localhost/kubemaas-build"


@dataclass(frozen=True)
class DockerfileImage:
    """One of images/*/Dockerfile as this machine builds it."""

    name: str  # `python -m e2e.cluster images NAME`
    ref: str  # the name the chart and the examples use
    dockerfile: str  # relative to the repo
    context: str  # relative to the repo
    inputs: tuple[str, ...]  # what the Dockerfile COPYs (relative to the repo): part of the cache key
    build_args: tuple[tuple[str, str], ...] = ()


DOCKERFILE_IMAGES = {
    image.name: image
    for image in (
        DockerfileImage(
            "operator",
            "kubemaas/operator:0.1.0",
            "images/operator/Dockerfile",
            ".",
            ("pyproject.toml", "operator"),
        ),
        DockerfileImage(
            "model-loader",
            "kubemaas/model-loader:0.1.0",
            "images/model-loader/Dockerfile",
            ".",
            ("pyproject.toml", "operator"),
        ),
        DockerfileImage(
            "trainer",
            "kubemaas/trainer:0.1.0",
            "images/trainer/Dockerfile",
            ".",
            ("pyproject.toml", "operator", "examples/training"),
        ),
        # The CPU variant: ./Dockerfile starts FROM nvcr.io's Triton, which these machines cannot pull.
        DockerfileImage(
            "triton-python",
            "kubemaas/triton-python:24.10",
            "images/triton-python/Dockerfile.cpu",
            "images/triton-python",
            (),
        ),
    )
}


def wheelhouse(repo: Path = REPO) -> Path:
    """The Makefile's WHEELHOUSE for this pyproject.toml; ImageError when `make venv` has not filled it."""
    path = WHEELS_ROOT / wheels_key(repo / "pyproject.toml")
    if not (path / ".complete").exists():
        raise ImageError(f"the wheel cache {path} is missing or incomplete: `make venv` downloads it once")
    return path


def dockerfile_key(image: DockerfileImage, base: str, wheels: Path, repo: Path = REPO) -> str:
    """Everything that decides the image: Dockerfile, the files it copies, the base, the wheels, the args."""
    parts = [
        ("ref", image.ref.encode()),
        ("base", base.encode()),
        ("dockerfile", (repo / image.dockerfile).read_bytes()),
    ]
    parts.append(("args", canonical_json(image.build_args)))
    parts.append(("wheels", "\n".join(sorted(p.name for p in wheels.iterdir())).encode()))
    for item in image.inputs:
        path = repo / item
        parts += tree_parts(path, f"{item}/") if path.is_dir() else [(item, path.read_bytes())]
    return content_key(parts)


def pack_dir_image(source: Path, dest: Path, ref: str) -> str:
    """Turn `buildah push dir:` output (manifest.json, blobs named by hex digest) into an OCI layout at dest.

    The blobs are moved, not copied.
    """
    manifest_bytes = (source / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    if manifest.get("mediaType", MEDIA_MANIFEST) != MEDIA_MANIFEST:
        raise ImageError(f"{source}: expected an OCI manifest, got {manifest.get('mediaType')}")
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    return write_layout(dest, ref, manifest_bytes, [(d, source / d.removeprefix("sha256:")) for d in digests])


def build_dockerfile(image: DockerfileImage) -> Path:
    """`buildah build` of one Dockerfile on the local base, offline (no network), as an OCI layout.

    The wheel cache is bind-mounted at /wheels and a pip.conf pointing at it at /etc/pip.conf, for RUN steps
    only. `--layers` keeps buildah's step cache, so images whose first steps agree share those layers.
    """
    base_archive = ensure_base()
    wheels = wheelhouse()
    key = dockerfile_key(image, base_archive.parent.name, wheels)
    if (cached := _cached(key)) is not None:
        return cached
    _need_build_tools(image.ref)
    # The base's name in buildah carries its key: two checkouts building at once (with different bases) never
    # retag each other's base between loading it and `FROM`, and buildah's step cache follows the content.
    base_name = f"{BASE_IMAGE}-{base_archive.parent.name}"
    load_into_buildah(base_archive, base_name)
    started = time.monotonic()
    staging = _staging()
    build_log = staging / "build.log"
    tag = f"{BUILD_TAG_PREFIX}/{image.name}:{key}"
    try:
        (staging / "pip.conf").write_text(PIP_OFFLINE_CONF)
        args = [arg for k, v in (("PYTHON_IMAGE", base_name), *image.build_args) for arg in ("--build-arg", f"{k}={v}")]
        # --force-rm: a failed build's working containers go too. Left behind, each held its copy of the
        # layer it was committing (6 GB of torch for the trainer), and the next build ran out of disk.
        command = [
            "buildah", "build", "--pull=never", "--network=none", "--layers", "--force-rm", "--format=oci",
            "-f", str(REPO / image.dockerfile), *args,
            "-v", f"{wheels}:/wheels:ro", "-v", f"{staging / 'pip.conf'}:/etc/pip.conf:ro",
            "-t", tag, str(REPO / image.context),
        ]  # fmt: skip
        log(f"building {image.ref} from {image.dockerfile} (follow: {build_log}) ...")
        _run(f"building {image.ref} from {image.dockerfile}", command, build_log)
        # `dir:` with -D keeps the layers uncompressed: no gzip of GBs on two cores, and equal layers keep
        # equal digests, so containerd stores a layer two images share once.
        _run(f"exporting {image.ref}", ["buildah", "push", "--quiet", "-D", tag, f"dir:{staging / 'dir'}"], build_log)
        pack_dir_image(staging / "dir", staging / LAYOUT_NAME, image.ref)
        shutil.rmtree(staging / "dir")
        (staging / "pip.conf").unlink()
        archive = _finish(key, staging, f"built in {time.monotonic() - started:.1f}s")
    except BaseException:
        if build_log.exists():  # keep the whole log of a failed build; the error carries only its tail
            kept = images_root() / f"{image.name}-{key}.failed.log"
            shutil.copyfile(build_log, kept)
            log(f"building {image.ref} failed; its log: {kept}")
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {image.ref} in {time.monotonic() - started:.0f}s: {archive}")
    return archive


# Entries another checkout may still use (other sources, same cache) are kept this long after their last use.
# An hour, not a day: every change under operator/ makes a new trainer variant, and a day of them (eleven, with
# buildah's copies) filled this machine's disk in the middle of a CI run. A pruned entry is only rebuilt.
PRUNE_UNUSED_SECONDS = 3600


def prune_cache(keep: Iterable[Path], unused_seconds: float = PRUNE_UNUSED_SECONDS) -> list[Path]:
    """Remove cached images (and failed-build logs) other than `keep` unused for unused_seconds; returns them.

    Each source change makes a new cache entry; `python -m e2e.cluster images` (all images) prunes the old
    ones. Several checkouts share the cache (worktrees of one repo), so an entry goes only when no build has
    used it for a day: one checkout's prune never takes what another is about to import.
    """
    kept = {path.parent.resolve() for path in keep}
    cutoff = time.time() - unused_seconds
    removed = []
    for entry in sorted(images_root().iterdir()) if images_root().exists() else []:
        if entry.resolve() in kept or entry.name.startswith(".partial-"):
            continue
        marker = entry / COMPLETE_MARKER if entry.is_dir() else entry
        if marker.exists() and marker.stat().st_mtime > cutoff:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def forget_builds(pruned: Iterable[Path]) -> None:
    """Drop buildah's own copies of pruned cache entries (the build tags named by their keys), then the
    untagged images only those held: buildah's storage otherwise keeps every variant ever built."""
    if shutil.which("buildah") is None:
        return
    keys = [entry.name for entry in pruned if not entry.name.endswith(".log")]
    tags = [f"{BUILD_TAG_PREFIX}/{name}:{key}" for key in keys for name in DOCKERFILE_IMAGES]
    for tag in tags:
        subprocess.run(["buildah", "rmi", tag], capture_output=True)
    if keys:
        subprocess.run(["buildah", "rmi", "--prune"], capture_output=True)


BUILDERS: dict[str, Callable[[], Path]] = {"pause": ensure_pause, "base": ensure_base}
BUILDERS.update({name: functools.partial(build_dockerfile, image) for name, image in DOCKERFILE_IMAGES.items()})


def ensure_image(name: str) -> Path:
    """The OCI layout directory of one image (built when the cache lacks it). Names: see BUILDERS."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(BUILDERS)}") from None
    return builder()


# ---------------------------------------------------------------------------------------------------------------
# Importing into the node's containerd


# An import stores each new layer twice (containerd's content store and the snapshot it unpacks to); what is
# left beside that keeps the machine usable (the API server's etcd, logs, the test runner's own files).
IMPORT_DISK_MARGIN = 2 * 1024**3


def import_space_needed(layers: Iterable[tuple[str, int]], held: frozenset[str]) -> int:
    """Bytes an import needs free: twice each layer containerd does not hold yet, plus the margin."""
    return 2 * sum(size for digest, size in layers if digest not in held) + IMPORT_DISK_MARGIN


def import_images(layouts: Sequence[Path], ctr: Sequence[str], store: Path | None = None) -> list[str]:
    """`ctr -n k8s.io images import` each image, then check containerd lists every name; returns the names.

    layouts: what ensure_image returns (OCI layout directories, streamed to ctr as a tar through a pipe, so no
    archive is written to disk), or OCI archive files. ctr: the command prefix with the node's socket, e.g.
    ["ctr", "--address", "/run/.../containerd.sock"]. Importing an image that is already there only re-reads
    it (containerd stores each blob once). store: containerd's root; an import that would not fit on its disk
    is refused before it starts (a 6 GB trainer that filled the disk took every process of the machine down
    with it, the test runner's included).
    """
    expected: list[str] = []
    k8s = [*ctr, "-n", CRI_NAMESPACE]
    _drop_stale_image_ids(k8s)
    for layout in layouts:
        # Layers containerd holds already (torch, shared by two images; a re-import) are not sent again: the
        # importer reads them from its content store. Manifests and configs always travel.
        sized = layout_layers(layout) if layout.is_dir() else []
        layers = {digest for digest, _ in sized}
        held = frozenset(layers & _content_digests(k8s)) if layers else frozenset()
        refs = layout_refs(layout) if layout.is_dir() else [str(layout)]
        if store is not None and (free := shutil.disk_usage(store).free) < (need := import_space_needed(sized, held)):
            raise ImageError(
                f"importing {', '.join(refs)} into the node needs about {need / 1024**3:.1f} GiB free on the disk "
                f"of {store}, which has {free / 1024**3:.1f} GiB: free some (stale image caches go with "
                "`python -m e2e.cluster images`; `python -m e2e.cluster down` then removing the node's store "
                "drops its old images)"
            )
        command = [*k8s, "images", "import", "-" if layout.is_dir() else str(layout)]
        started = time.monotonic()
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT)
            assert process.stdin is not None
            try:
                if layout.is_dir():
                    write_layout_tar(layout, process.stdin, held)
                process.stdin.close()
            except BrokenPipeError:
                pass  # ctr stopped reading: its exit status and output say why
            returncode = process.wait()
            output.seek(0)
            said = output.read().decode(errors="replace").strip()
        if returncode != 0:
            raise ImageError(
                f"importing {layout} ({', '.join(refs)}) failed: `{' '.join(command)}` exited {returncode}: {said}"
            )
        reused = f", {len(held)} layers already held" if held else ""
        log(f"imported {', '.join(refs)} in {time.monotonic() - started:.1f}s{reused}")
        if layout.is_dir():
            expected += refs
    listed = subprocess.run([*k8s, "images", "ls", "-q"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise ImageError(f"listing containerd's images failed: {(listed.stdout + listed.stderr).strip()}")
    missing = sorted(set(expected) - set(listed.stdout.split()))
    if missing:
        raise ImageError(f"containerd does not list {', '.join(missing)} after the import")
    _drop_stale_image_ids(k8s)  # what this import's names pointed at before
    return expected


def stale_image_ids(listing: str) -> list[str]:
    """The ``sha256:<config>`` references in ``ctr images ls`` output whose image no name points at any more.

    containerd's CRI plugin gives every image it sees a second reference, its id. When an image is imported
    again under its name (each rebuild of the trainer: 6 GB), the name moves to the new manifest but the old id
    reference stays, and with it every layer of the old image: the node's store grew by a trainer per rebuild
    until the disk filled. Dropping these references lets containerd's garbage collector take the old layers;
    a running container keeps its own snapshot whatever references go.
    """
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    named = {row[2] for row in rows if len(row) > 2 and not row[0].startswith("sha256:")}
    return [row[0] for row in rows if len(row) > 2 and row[0].startswith("sha256:") and row[2] not in named]


def _drop_stale_image_ids(k8s: Sequence[str]) -> None:
    listed = subprocess.run([*k8s, "images", "ls"], capture_output=True, text=True)
    stale = stale_image_ids(listed.stdout) if listed.returncode == 0 else []
    if stale:
        subprocess.run([*k8s, "images", "rm", *stale], capture_output=True, text=True)
        log(f"dropped {len(stale)} image references no name points at (their layers are garbage-collected)")


def _content_digests(k8s: Sequence[str]) -> set[str]:
    listed = subprocess.run([*k8s, "content", "ls", "-q"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise ImageError(f"listing containerd's content failed: {(listed.stdout + listed.stderr).strip()}")
    return set(listed.stdout.split())


def write_archive(layout: Path, dest: Path) -> Path:
    """An image as one OCI archive file (to copy to another machine, or `ctr images import FILE` by hand)."""
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    with partial.open("wb") as f:
        write_layout_tar(layout, f)
    partial.rename(dest)
    return dest
