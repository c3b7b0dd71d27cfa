"""Attachment bytes, content-addressed: a file per SHA-256 under ``INBOXSYNC_BLOB_DIR``.

The address is the hash, so writing is idempotent (a mail stored twice, or the same file in a
hundred mails, is one blob) and a blob never changes once written. A write goes to a temporary
file that is fsynced and renamed into place, so a crash leaves a whole blob or none. Blobs are
written before the transaction that stores their message commits: a crash in between leaves an
unreferenced blob (harmless, collected later), never a message whose attachment is missing.

Several hosts need the directory shared (NFS, a mounted volume); an object store is a seam here:
``put`` / ``read`` are all the rest of the code uses.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from settings import get_settings

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobWriteError(Exception):
    """The blob store could not keep a blob (disk full, permissions): worth retrying later."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise BlobWriteError(f"cannot keep blob {digest}: {exc}") from exc
        return digest

    def put_all(self, blobs: Iterable[bytes]) -> list[str]:
        return [self.put(b) for b in blobs]

    def read(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None


@lru_cache
def blob_store() -> BlobStore:
    return BlobStore(get_settings().resolved_blob_dir)
