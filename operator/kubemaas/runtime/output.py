"""Where rank 0 writes: the output store (``KUBEMAAS_OUTPUT_URI``) and the job's checkpoints in it.

On a claim, checkpoints go to ``<root>/<model>/.checkpoints/<version>/`` beneath the claim's mount; in a bucket, to
the same keys below the URI's prefix. ``KUBEMAAS_CHECKPOINT_DIR`` puts them in a directory of the pod instead.
Opening fails in seconds, not after hours of training, when rank 0 could not checkpoint or publish: the claim is
not mounted, or the bucket refuses these credentials or does not exist.
"""

from __future__ import annotations

from typing import Any

from kubemaas.contract import Settings
from kubemaas.contract.store import S3Settings
from kubemaas.runtime.artifacts import ArtifactStore
from kubemaas.runtime.checkpoint import CheckpointStore, DirectoryCheckpoints
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.stores import Store


class OutputNotMountedError(ValueError):
    """The pod is not set up as the contract says: the output claim is not mounted."""


def open_output(settings: Settings, s3: S3Settings, keyring: Keyring) -> tuple[Store[Any], CheckpointStore]:
    """The output store and the checkpoint store of this job's version, both checked for access."""
    model, version = settings.model_name, settings.model_version
    binding: dict[str, Any] = {"model": model, "version": version, "keyring": keyring, "keep": settings.checkpoint_keep}
    if settings.output_in_bucket:
        from kubemaas.runtime.object_checkpoint import ObjectCheckpoints  # boto3 only where a bucket is used
        from kubemaas.runtime.object_client import client_for
        from kubemaas.runtime.object_store import ObjectArtifactStore

        client = client_for(s3)
        bucket = ObjectArtifactStore(settings.output_uri, client)
        bucket.latest_version(model)  # access denied or no such bucket: now, not at the first checkpoint
        if settings.checkpoint_dir is not None:
            return bucket, DirectoryCheckpoints(settings.checkpoint_dir, **binding)
        prefix = f"{settings.output_uri}/{model}/.checkpoints/{version}"
        return bucket, ObjectCheckpoints(prefix, client, **binding)
    mount = settings.output_mount
    if not mount.is_dir():
        raise OutputNotMountedError(f"output store {mount} is not mounted")
    settings.output_root.mkdir(parents=True, exist_ok=True)
    path = settings.checkpoint_path
    # Beneath the claim's mount like the store, unless KUBEMAAS_CHECKPOINT_DIR points elsewhere.
    checkpoints = DirectoryCheckpoints(path, root=mount if path.is_relative_to(mount) else None, **binding)
    return ArtifactStore.from_uri(settings.output_uri, mount_root=settings.mount_root), checkpoints
