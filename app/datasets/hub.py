"""What is read from the Hugging Face Hub by name: a dataset repo's files for one split, a model's small files.

Every read is one tenant's (app/datasets/access.py): its allow-list first, then the repo listed with the tenant's
token (or none), then only the files chosen from that listing downloaded, pinned to the listed commit, and a split
over the tenant's size limit refused before any byte of it is fetched. The listing is also the access check:
huggingface_hub hands out a cached file when the Hub refuses a request (a private repo, no token), so nothing is
read from the cache unless the Hub has just listed the repo for this token. Only when the Hub cannot be reached at
all (HF_HUB_OFFLINE, no network) is the cached copy listed instead; the allow-lists still apply then.
Files go through huggingface_hub's own cache (`HF_HOME`, `HF_HUB_CACHE`), so the API and a worker on one host
download once. A dataset split's files are chosen by the Hub's naming conventions and parsed like uploads.
"""

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.core.errors import Invalid, TooLarge
from app.datasets.access import ANONYMOUS, HubAccess, base_model_refusal, check_hub_repo
from app.datasets.files import FORMATS, ParsedDataset, parse_dataset
from app.spec.formats import HubDataset

NOT_DATA = re.compile(r"(^|/)(\.|dataset_infos?\.json$|dataset_dict\.json$|state\.json$)")
# The Hub's split keywords and their synonyms, as its data-files conventions match them in file paths.
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
COMMIT = re.compile(r"[0-9a-f]{40}")


class HubUnavailable(Exception):
    """The Hub could not be asked (no network, offline mode) and nothing is cached: not the user's fault."""


def _keyword(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|[/_.\-]){re.escape(name)}([/_.\-]|$)", re.IGNORECASE)


def split_paths(paths: Iterable[str], split: str) -> list[str]:
    """The data files of one split among a repo's file paths: those naming the split (or a synonym); with no
    split named anywhere, all files are `train`, as on the Hub."""
    files = sorted(p for p in paths if PurePosixPath(p).suffix.lower() in FORMATS and not NOT_DATA.search(p))
    names = SPLIT_NAMES.get(split, (split,))
    chosen = [p for p in files if any(_keyword(n).search(p) for n in names)]
    if chosen:
        return chosen
    any_split = [n for known in SPLIT_NAMES.values() for n in known]
    named = [p for p in files if any(_keyword(n).search(p) for n in any_split)]
    return files if split == "train" and not named else []


def split_files(root: Path, split: str) -> list[Path]:
    """`split_paths` for the files under a folder."""
    paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return [root / p for p in split_paths(paths, split)]


@dataclass(frozen=True)
class RepoListing:
    """A repo's files and sizes, as the Hub listed them for one tenant's token (or as cached, when offline)."""

    repo_id: str
    repo_type: str  # "dataset" or "model"
    revision: str | None  # the commit listed; None when listed from the cache
    files: dict[str, int]  # path in the repo -> bytes
    cached: Path | None = None  # the cached snapshot, when the Hub could not be reached


def _refused(kind: str, repo_id: str, access: HubAccess) -> Invalid:
    if access.token:
        why = "the tenant's Hub token cannot read it"
    else:
        why = "this tenant has no Hub token (an admin sets one: PUT /admin/tenants/{tenant}/hub-token)"
    return Invalid(f"{kind} {repo_id!r} is not on the Hugging Face Hub, or is private or gated and {why}")


@contextmanager
def _hub_call(kind: str, repo_id: str, access: HubAccess) -> Iterator[None]:
    """The Hub's refusals as the user's problem (422), its failures as HubUnavailable."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError):  # gated repos too (GatedRepoError)
        raise _refused(kind, repo_id, access) from None
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code in (401, 403, 404):
            raise _refused(kind, repo_id, access) from None
        raise HubUnavailable(f"the Hugging Face Hub failed to answer for {repo_id!r} ({exc})") from exc


def _cached_snapshot(repo_id: str, repo_type: str) -> Path | None:
    """The cached snapshot of the repo's main branch, read from the cache's own layout (no network)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = folder / "refs" / "main"
    commit = ref.read_text().strip() if ref.is_file() else ""
    snapshot = folder / "snapshots" / commit
    return snapshot if COMMIT.fullmatch(commit) and snapshot.is_dir() else None


def list_repo(repo_id: str, repo_type: str, access: HubAccess, revision: str | None = None) -> RepoListing:
    """The repo's files and sizes for this tenant's token, at `revision` (None: main); the cached copy's only when
    the Hub is unreachable (main only: which commit a branch or tag is at is the Hub's to say)."""
    import httpx2
    import huggingface_hub

    kind = "dataset" if repo_type == "dataset" else "model"
    api = huggingface_hub.HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        with _hub_call(kind, repo_id, access):
            found = info(repo_id, revision=revision, files_metadata=True, token=access.hf_token)
    except (httpx2.TransportError, ConnectionError, TimeoutError) as exc:  # no answer at all (OfflineModeIsEnabled)
        cached = _cached_snapshot(repo_id, repo_type) if revision is None else None
        if cached is None:
            raise HubUnavailable(f"the Hugging Face Hub cannot be reached and {repo_id!r} is not cached") from exc
        files = {p.relative_to(cached).as_posix(): p.stat().st_size for p in cached.rglob("*") if p.is_file()}
        return RepoListing(repo_id, repo_type, None, files, cached)
    files = {s.rfilename: int(s.size or 0) for s in found.siblings or []}
    return RepoListing(repo_id, repo_type, found.sha, files)


def fetch(listing: RepoListing, paths: list[str], access: HubAccess) -> Path | None:
    """Download exactly these listed files at the listed commit; the folder they are in (None: no paths)."""
    import httpx2
    import huggingface_hub

    if listing.cached is not None:
        return listing.cached
    root = None
    kind = "dataset" if listing.repo_type == "dataset" else "model"
    for path in paths:
        try:
            with _hub_call(kind, listing.repo_id, access):
                local = huggingface_hub.hf_hub_download(
                    listing.repo_id,
                    path,
                    repo_type=listing.repo_type,
                    revision=listing.revision,
                    token=access.hf_token,
                )
        except (httpx2.TransportError, OSError) as exc:  # the network went away between listing and download
            raise HubUnavailable(f"the Hugging Face Hub cannot be reached ({type(exc).__name__})") from exc
        root = Path(local).parents[len(PurePosixPath(path).parts) - 1]
    return root


def hub_model_files(repo_id: str, names: Iterable[str], access: HubAccess) -> Path | None:
    """The model repo's files of these names that it has (a tokenizer's, config.json), read as the tenant."""
    if (refusal := base_model_refusal(access.tenant, repo_id, is_local=False)) is not None:
        raise Invalid(refusal)
    listing = list_repo(repo_id, "model", access)
    return fetch(listing, [n for n in names if n in listing.files], access)


# --- dataset splits ---


@dataclass(frozen=True)
class HubSplit:
    """One split of a Hub dataset: its files in the repo's listing, before any of them is downloaded."""

    ref: HubDataset
    listing: RepoListing
    paths: list[str]

    @property
    def size(self) -> int:
        return sum(self.listing.files[p] for p in self.paths)


def list_hub_split(ref: HubDataset, access: HubAccess) -> HubSplit:
    """The split's files from the repo's listing, refused (422, 413) before anything is downloaded."""
    check_hub_repo(access, ref.hub, "hub dataset")
    listing = list_repo(ref.hub, "dataset", access)
    split = HubSplit(ref, listing, split_paths(listing.files, ref.split))
    if not split.paths:
        raise Invalid(
            f"hub dataset {ref.hub!r} has no files for split {ref.split!r} "
            "(JSONL, JSON, CSV, TSV or Parquet files whose path names the split)"
        )
    limit, source = access.size_limit()
    if split.size > limit:
        raise TooLarge(
            f"hub dataset {ref.hub!r} split {ref.split!r} is {split.size:,} bytes, over the {limit:,}-byte limit "
            f"({source}); use a smaller split, or upload a part of it"
        )
    return split


def read_hub_split(split: HubSplit, access: HubAccess) -> ParsedDataset:
    """Download the split's files and parse them like an upload."""
    root = fetch(split.listing, split.paths, access)
    assert root is not None  # a split has at least one file
    rows, columns, formats = [], {}, []
    for name in split.paths:
        path = root / name
        try:
            parsed = parse_dataset(path.name, path.read_bytes())
        except Invalid as exc:
            raise Invalid(f"hub dataset {split.ref.hub!r}, file {name}: {exc.detail}") from None
        rows.extend(parsed.rows)
        columns.update(dict.fromkeys(parsed.columns))
        formats.append(parsed.format)
    return ParsedDataset(format=formats[0], rows=rows, columns=list(columns))


def load_hub_dataset(ref: HubDataset, access: HubAccess = ANONYMOUS) -> ParsedDataset:
    """Rows of `ref.split` of a Hub dataset repo, read as the tenant and held to its upload size limit."""
    return read_hub_split(list_hub_split(ref, access), access)
