"""Container images for the real node, without Docker or a registry (issue 14, deliverable 2).

Nothing can be pulled on these machines, so every image the node runs is made here and imported into
its containerd with `ctr images import`:

* ``pause``: the sandbox image, a tiny static Go program (modules/pause) packed as a one-layer OCI
  image archive by this module (tar + JSON, no tools needed).

Each image is cached under ``<cache>/images/<key>/`` where the key hashes everything that decides its
bytes, so a second build is a lookup. The archives are OCI image layouts in a tar (what `ctr images
import`, `skopeo` and `buildah pull oci-archive:` read); their index names the image both with
containerd's full-name annotation and with the OCI tag annotation.
"""

from __future__ import annotations

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .versions import CLUSTER_DIR, cache_root

# The node's sandbox image (containerd's `sandbox_image`); the name is ours, nothing pulls it.
PAUSE_IMAGE = "localhost/kubemaas/pause:1.0"
# Debian packages the image build needs (the node code installs them with its own apt function).
IMAGE_BUILD_PACKAGES = ("buildah", "umoci", "debootstrap")
# Bump when the packing below changes the archives' bytes, so old cache entries are not reused.
PACKING_VERSION = "1"
PAUSE_MODULE = CLUSTER_DIR / "modules" / "pause"
ARCHIVE_NAME = "image.oci.tar"
COMPLETE_MARKER = ".complete"

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
    config: dict[str, Any] = {"Env": list(env), "Entrypoint": list(entrypoint)}
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


def write_oci_archive(dest: Path, ref: str, config: dict[str, Any], layers: Sequence[Layer]) -> str:
    """Write an OCI image layout as a tar at dest naming the image `ref`; returns the manifest digest.

    Written to a temporary name and renamed, so an interrupted build never leaves a half archive.
    """
    full = normalize_ref(ref)
    config_bytes = canonical_json(config)
    config_blob = Blob(MEDIA_CONFIG, f"sha256:{hashlib.sha256(config_bytes).hexdigest()}", len(config_bytes))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    manifest_bytes = canonical_json(manifest)
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
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        add_bytes("index.json", canonical_json(index))
        add_bytes(f"blobs/sha256/{manifest_blob.digest[7:]}", manifest_bytes)
        add_bytes(f"blobs/sha256/{config_blob.digest[7:]}", config_bytes)
        for layer in layers:
            info = tarfile.TarInfo(f"blobs/sha256/{layer.blob.digest[7:]}")
            info.size, info.mode = layer.blob.size, 0o644
            with layer.path.open("rb") as f:
                tar.addfile(info, f)
    partial.rename(dest)
    return manifest_blob.digest


def archive_refs(archive: Path) -> list[str]:
    """The image names an OCI archive's index carries (containerd's annotation)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            if member is None:
                raise ImageError(f"{archive}: index.json is not a file")
            index = json.load(member)
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as error:
        raise ImageError(f"{archive} is not an OCI image archive: {error}") from error
    refs = [m.get("annotations", {}).get(ANNOTATION_CONTAINERD_NAME) for m in index.get("manifests", [])]
    if not refs or None in refs:
        raise ImageError(f"{archive}: every manifest in index.json needs the {ANNOTATION_CONTAINERD_NAME} annotation")
    return [str(r) for r in refs]


# ---------------------------------------------------------------------------------------------------------------
# Building


def images_root() -> Path:
    return cache_root() / "images"


def _cached(key: str) -> Path | None:
    directory = images_root() / key
    return directory / ARCHIVE_NAME if (directory / COMPLETE_MARKER).exists() else None


def _finish(key: str, staging: Path, note: str) -> Path:
    """Move a staging directory holding ARCHIVE_NAME into the cache under key (atomically)."""
    (staging / COMPLETE_MARKER).write_text(note + "\n")
    target = images_root() / key
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target / ARCHIVE_NAME


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
    """The pause image archive: `go build` of modules/pause (static, stripped) in one layer at /pause."""
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
        write_oci_archive(staging / ARCHIVE_NAME, PAUSE_IMAGE, config, [layer])
        layer.path.unlink()
        archive = _finish(key, staging, f"built in {time.monotonic() - started:.1f}s")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {PAUSE_IMAGE} in {time.monotonic() - started:.1f}s: {archive}")
    return archive


BUILDERS = {"pause": ensure_pause}


def ensure_image(name: str) -> Path:
    """The OCI archive of one image (built when the cache lacks it). Names: see BUILDERS."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(BUILDERS)}") from None
    return builder()


# ---------------------------------------------------------------------------------------------------------------
# Importing into the node's containerd


def import_images(archives: Sequence[Path], ctr: Sequence[str]) -> list[str]:
    """`ctr -n k8s.io images import` each archive, then check containerd lists every name; returns the names.

    ctr: the command prefix with the node's socket, e.g. ["ctr", "--address", "/run/.../containerd.sock"].
    Importing an image that is already there only re-reads the archive (containerd dedups blobs).
    """
    expected: list[str] = []
    for archive in archives:
        refs = archive_refs(archive)
        command = [*ctr, "-n", CRI_NAMESPACE, "images", "import", str(archive)]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(
                f"importing {archive} ({', '.join(refs)}) failed: `{' '.join(command)}` exited "
                f"{result.returncode}: {(result.stdout + result.stderr).strip()}"
            )
        log(f"imported {', '.join(refs)} in {time.monotonic() - started:.1f}s")
        expected += refs
    listed = subprocess.run([*ctr, "-n", CRI_NAMESPACE, "images", "ls", "-q"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise ImageError(f"listing containerd's images failed: {(listed.stdout + listed.stderr).strip()}")
    missing = sorted(set(expected) - set(listed.stdout.split()))
    if missing:
        raise ImageError(f"containerd does not list {', '.join(missing)} after the import")
    return expected
