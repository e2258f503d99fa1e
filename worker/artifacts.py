"""Package a saved adapter directory as the downloadable .tar.gz (files at the archive's top level)."""

import tarfile
from pathlib import Path

from app.storage import sha256_file


def pack_directory(source: Path, dest: Path, only: tuple[str, ...] | None = None) -> tuple[int, str]:
    """Write source's files (or just `only`) into dest (.tar.gz) without a leading folder; returns (size, sha256).

    A write that fails (a full disk) leaves nothing behind: neither the partial archive nor a dest that is not whole.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for path in sorted(source.rglob("*")):
                if path.is_file() and (only is None or path.name in only):
                    tar.add(path, arcname=str(path.relative_to(source)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)  # atomic: a download never sees a half-written archive
    return dest.stat().st_size, sha256_file(dest)
