"""Where a job's data lives: storage URIs of inputs, outputs and code, and the keys trainyard keeps.

A user URI names a store root and a path in it: `s3://bucket/a/b`, `az://container/a/b`,
`file:///abs/path`. A path ending in `/` is a prefix (a directory tree); otherwise it names one
object (or, when no such object exists, the tree under `path/`). Code uploaded through the API
is content-addressed: `trainyard-code://sha256:<hex>` is the object `code/<hex>.tar.gz` of the
cluster's own store. Workers and the API open user stores with their own credentials (SPEC §9).
"""

from __future__ import annotations

import hashlib
import re
import threading
from urllib.parse import urlsplit

from trainyard.spec import JobSpec
from trainyard.storage_adapters import REGISTRY, Storage, open_storage

CODE_SCHEME = "trainyard-code"
USER_SCHEMES = frozenset(REGISTRY)  # file, memory, s3, az
_CODE_URI = re.compile(r"^trainyard-code://sha256:([0-9a-f]{64})$")
_OUTPUT_KEY = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STORES: dict[str, Storage] = {}
_STORES_LOCK = threading.Lock()


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def is_user_uri(uri: str) -> bool:
    return scheme_of(uri) in USER_SCHEMES


def split_uri(uri: str) -> tuple[str, str]:
    """(store root URL, path in it) of a user URI; the path keeps a trailing '/' when given."""
    scheme = scheme_of(uri)
    if scheme not in USER_SCHEMES:
        raise ValueError(f"{uri!r} is not a storage URI ({', '.join(sorted(s + '://' for s in USER_SCHEMES))})")
    if scheme == "file":
        path = uri.removeprefix("file://")
        if not path.startswith("/"):
            raise ValueError(f"{uri!r}: a file:// URI needs an absolute path (file:///data/x)")
        return "file:///", path.lstrip("/")
    parts = urlsplit(uri)
    if not parts.netloc:
        raise ValueError(f"{uri!r} names no bucket or container")
    return f"{scheme}://{parts.netloc}", parts.path.lstrip("/")


def overlaps(uri: str, root_url: str) -> bool:
    """Whether `uri` lies inside `root_url` or contains it (same store, one path a prefix of the other).

    The cluster's own store holds every job's logs, code, checkpoints and manifests: a job's data
    URIs must stay out of it, or one tenant could read or overwrite another's.
    """
    try:
        (root_a, path_a), (root_b, path_b) = split_uri(uri), split_uri(root_url)
    except ValueError:
        return False
    if root_a != root_b:
        return False
    a, b = path_a.strip("/"), path_b.strip("/")
    return not a or not b or a == b or a.startswith(b + "/") or b.startswith(a + "/")


def join_uri(uri: str, path: str) -> str:
    return uri.rstrip("/") + "/" + path


def open_root(root_url: str) -> Storage:
    """An adapter per store root, kept for the process's life (clients are slow to build)."""
    with _STORES_LOCK:
        if root_url not in _STORES:
            _STORES[root_url] = open_storage(root_url)
        return _STORES[root_url]


# -- code ------------------------------------------------------------------------------------


def code_uri(digest: str) -> str:
    return f"{CODE_SCHEME}://sha256:{digest}"


def code_digest(uri: str) -> str | None:
    """The sha256 a trainyard-code:// URI names, else None."""
    match = _CODE_URI.match(uri)
    return match.group(1) if match else None


def code_key(digest: str) -> str:
    return f"code/{digest}.tar.gz"


def is_local_code(code: str) -> bool:
    """A `code:` the CLI/SDK must pack and upload (a local directory, not a URI)."""
    return "://" not in code


# -- what trainyard keeps in the cluster's store ---------------------------------------------


def manifests_prefix(job_id: str) -> str:
    return f"outputs/{job_id}/"


def manifest_key(job_id: str, attempt: int, rank: int) -> str:
    return f"outputs/{job_id}/{attempt}/manifest-{rank}.json"


def checkpoint_prefix(job_id: str, rank: int) -> str:
    return f"checkpoints/{job_id}/{rank}/"


def output_file_key(attempt: int, rank: int, output_id: str, path: str) -> str:
    """The opaque name an output file is served under: it carries no path a client could bend."""
    return hashlib.sha256(f"{attempt}\0{rank}\0{output_id}\0{path}".encode()).hexdigest()[:32]


def is_output_key(key: str) -> bool:
    return bool(_OUTPUT_KEY.match(key))


def safe_relpath(path: str) -> bool:
    """A relative '/'-path that stays below its root: no '..', no absolute, no backslash or control char."""
    if not path or path.startswith("/") or "\\" in path or _CONTROL.search(path):
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable file names come back from os.walk as surrogates
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


# -- validation at submit --------------------------------------------------------------------


def uri_problem(uri: str, cluster_url: str | None) -> str | None:
    """Why a job may not use `uri` for its data, or None."""
    try:
        split_uri(uri)
    except ValueError as exc:
        return str(exc)
    if cluster_url and overlaps(uri, cluster_url):
        return "overlaps trainyard's own store (TRAINYARD_STORAGE_URL): use a location of your own"
    return None


def spec_problems(spec: JobSpec, cluster_url: str | None = None) -> list[dict[str, str]]:
    """What the API refuses about a spec's data references (with the field path of each)."""
    problems = []
    for field_name in ("inputs", "outputs"):
        for i, ref in enumerate(getattr(spec, field_name)):
            problem = uri_problem(ref.uri, cluster_url)
            if problem:
                problems.append({"field": f"{field_name}[{i}].uri", "reason": problem})
    for i, volume in enumerate(spec.volumes):
        if volume.uri is not None and (problem := uri_problem(volume.uri, cluster_url)):
            problems.append({"field": f"volumes[{i}].uri", "reason": problem})
    if spec.code is not None and code_digest(spec.code) is None:
        if is_local_code(spec.code):
            problems.append(
                {
                    "field": "code",
                    "reason": "a local directory is packed and uploaded by the CLI/SDK; "
                    "the API takes a storage URI or trainyard-code://sha256:<hex> (POST /v1/code)",
                }
            )
        elif problem := uri_problem(spec.code, cluster_url):
            problems.append({"field": "code", "reason": problem})
    return problems
