"""What is fetched from the Hugging Face Hub by name: a dataset repo's files for one split, a model's tokenizer.

Both go through huggingface_hub's own cache (`HF_HOME`, `HF_HUB_CACHE`; `HF_TOKEN` for private repos), so the
API and a worker on the same host download once, and a host without network uses what is cached. A dataset
split's files are chosen by the Hub's naming conventions and parsed by the same code as uploads.
"""

import re
from pathlib import Path

from app.core.config import settings
from app.core.errors import Invalid, TooLarge
from app.datasets.files import FORMATS, ParsedDataset, parse_dataset
from app.spec.formats import HubDataset

DATA_PATTERNS = [f"*{suffix}" for suffix in FORMATS]
NOT_DATA = re.compile(r"(^|/)(\.|dataset_infos?\.json$|dataset_dict\.json$|state\.json$)")
# The Hub's split keywords and their synonyms, as its data-files conventions match them in file paths.
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


class HubUnavailable(Exception):
    """The Hub could not be asked (no network, offline mode) and nothing is cached: not the user's fault."""


def _keyword(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|[/_.\-]){re.escape(name)}([/_.\-]|$)", re.IGNORECASE)


def split_files(root: Path, split: str) -> list[Path]:
    """The data files of one split: paths naming the split (or a synonym); with no split named anywhere, all
    files are `train`, as on the Hub."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in FORMATS and not NOT_DATA.search(p.relative_to(root).as_posix())
    )
    names = SPLIT_NAMES.get(split, (split,))
    chosen = [p for p in files if any(_keyword(n).search(p.relative_to(root).as_posix()) for n in names)]
    if chosen:
        return chosen
    any_split = [n for known in SPLIT_NAMES.values() for n in known]
    named = [p for p in files if any(_keyword(n).search(p.relative_to(root).as_posix()) for n in any_split)]
    return files if split == "train" and not named else []


def hub_snapshot(repo_id: str, repo_type: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    kind = "dataset" if repo_type == "dataset" else "model"
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError):
        raise Invalid(
            f"{kind} {repo_id!r} is not on the Hugging Face Hub, or is private or gated "
            "(set HF_TOKEN for the API and the workers)"
        ) from None
    except LocalEntryNotFoundError as exc:
        raise HubUnavailable(f"the Hugging Face Hub cannot be reached and {repo_id!r} is not cached") from exc
    except OSError as exc:  # network errors that huggingface_hub passes through
        raise HubUnavailable(f"the Hugging Face Hub cannot be reached ({type(exc).__name__})") from exc


def load_hub_dataset(ref: HubDataset) -> ParsedDataset:
    """Rows of `ref.split` of a Hub dataset repo, parsed like an upload and held to the same size limit."""
    root = hub_snapshot(ref.hub, "dataset", DATA_PATTERNS)
    files = split_files(root, ref.split)
    if not files:
        raise Invalid(
            f"hub dataset {ref.hub!r} has no files for split {ref.split!r} "
            "(JSONL, JSON, CSV, TSV or Parquet files whose path names the split)"
        )
    size = sum(p.stat().st_size for p in files)
    if size > settings.max_upload_bytes:
        raise TooLarge(
            f"hub dataset {ref.hub!r} split {ref.split!r} is {size:,} bytes, over the "
            f"{settings.max_upload_bytes:,}-byte limit (FT_MAX_UPLOAD_BYTES)"
        )
    rows, columns, formats = [], {}, []
    for path in files:
        try:
            parsed = parse_dataset(path.name, path.read_bytes())
        except Invalid as exc:
            raise Invalid(f"hub dataset {ref.hub!r}, file {path.relative_to(root).as_posix()}: {exc.detail}") from None
        rows.extend(parsed.rows)
        columns.update(dict.fromkeys(parsed.columns))
        formats.append(parsed.format)
    return ParsedDataset(format=formats[0], rows=rows, columns=list(columns))
