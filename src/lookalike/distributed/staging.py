"""Where Ray workers drop finished shard files: the gallery's own `.partial/` or any fsspec URL.

A gallery is memory-mapped when searched, so it lives on a local or shared filesystem; the
workers, though, may not see that filesystem (cloud clusters usually share only a bucket).
`ShardStore` writes shards through fsspec, each one atomically (a shard is whole or absent),
and the driver copies them into `<out>/.partial/` before the local engine's `commit` runs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import GalleryError
from ..fileio import atomic_write_bytes, json_text

JOB_FILE = "job.json"  # identity of the extraction the shards in a staging URL belong to


@dataclass(frozen=True)
class ShardStore:
    """A folder URL (s3://bucket/job, file:///nfs/x, /local/path, memory://x) holding shard files."""

    url: str

    @cached_property
    def _fs_path(self):
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)

    @property
    def is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self._fs_path[0], LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        """The folder on this machine's filesystem, or None for remote stores."""
        return Path(self._fs_path[1]).resolve() if self.is_local else None

    def _path(self, name: str) -> str:
        return self._fs_path[1].rstrip("/") + "/" + name

    def write(self, name: str, data: bytes) -> None:
        """Atomic: a local file is renamed into place; elsewhere a temporary object is moved (object stores copy whole
        objects)."""
        fs, _ = self._fs_path
        if self.is_local:
            atomic_write_bytes(Path(self._path(name)), data)
            return
        tmp = self._path(f".{name}.{uuid.uuid4().hex}.tmp")
        fs.pipe_file(tmp, data)
        fs.mv(tmp, self._path(name))

    def read(self, name: str) -> bytes:
        return self._fs_path[0].cat_file(self._path(name))

    def names(self) -> set[str]:
        """Finished files (temporaries excluded)."""
        fs, root = self._fs_path
        if not fs.exists(root):
            return set()
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        return {n for n in names if n and not n.startswith(".")}

    def shard_names(self) -> set[str]:
        return {n for n in self.names() if n.startswith("shard-") and n.endswith(".npz")}

    def clear(self) -> None:
        fs, root = self._fs_path
        if fs.exists(root):
            fs.rm(root, recursive=True)

    def claim(self, identity: dict, records_digest: str, overwrite: bool) -> None:
        """Tie this store to one extraction, so shards of another job are never mixed in.

        A store already tied to other arguments is refused (or, with --overwrite, emptied).
        """
        mine = {"identity": identity, "records_digest": records_digest}
        if JOB_FILE in self.names():
            theirs = json.loads(self.read(JOB_FILE))
            if theirs == mine:
                return
            if not overwrite:
                raise GalleryError(
                    f"staging location {self.url} holds shards of another extraction; give another --staging URL or"
                    " pass --overwrite"
                )
            self.clear()
        elif self.shard_names() and not overwrite:
            raise GalleryError(
                f"staging location {self.url} holds shard files of an unknown extraction; give another --staging URL or"
                " pass --overwrite"
            )
        elif self.shard_names():
            self.clear()
        self.write(JOB_FILE, json_text(mine, sort_keys=True).encode())
