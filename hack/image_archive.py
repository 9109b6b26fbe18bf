#!/usr/bin/env python3
"""Write a one-layer image archive (the `docker save` format, which `ctr images import` reads) from local files.

    image_archive.py OUT.tar REF --file SRC=DEST [--file ...] [--entrypoint PATH] [--user UID:GID]

The pod sandbox image of hack/k8s.sh is one static binary: it is packed here, with no daemon and no registry.
The archive is reproducible: fixed timestamps and owners, so the same binary gives the same image id.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path


def layer_tar(files: list[tuple[Path, str]]) -> bytes:
    """The layer: each file at its destination (parent folders made), owned by root, dated 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for src, dest in files:
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                if folder not in made:
                    made.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            data = src.read_bytes()
            info = tarfile.TarInfo("/".join(parts))
            info.size = len(data)
            info.mode = src.stat().st_mode & 0o777
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive(out: Path, ref: str, files: list[tuple[Path, str]], entrypoint: list[str], user: str) -> str:
    """Write the archive; return the image id (the config's sha256)."""
    layer = layer_tar(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/image_archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [ref], "Layers": ["layer.tar"]}]
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"{image_id}.json", config_bytes),
            ("layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return image_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("ref")
    parser.add_argument("--file", action="append", required=True, metavar="SRC=DEST")
    parser.add_argument("--entrypoint", default="")
    parser.add_argument("--user", default="65535:65535")
    args = parser.parse_args()
    files = []
    for spec in args.file:
        src, sep, dest = spec.partition("=")
        if not sep or not dest.startswith("/"):
            parser.error(f"--file {spec!r}: expected SRC=/DEST")
        files.append((Path(src), dest))
    entrypoint = [args.entrypoint] if args.entrypoint else []
    print(archive(args.out, args.ref, files, entrypoint, args.user))


if __name__ == "__main__":
    main()
