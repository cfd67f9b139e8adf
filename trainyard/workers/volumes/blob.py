"""`blob` volumes: an s3:// or az:// container mounted through FUSE with `rclone mount`.

Why rclone: one maintained tool for both S3 and Azure Blob (blobfuse2 is Azure-only and not in
Debian; s3fs is S3-only), packaged by Debian, configurable entirely through environment
variables (credentials never appear on a command line), and with a write cache that uploads a
file whole when it is closed, so readers of the store never see part of one.
Credentials come from the node's environment, overridden by the job's secrets under the same
names (AWS_ACCESS_KEY_ID, AZURE_STORAGE_CONNECTION_STRING, …).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from trainyard import datarefs
from trainyard.spec import VolumeSpec
from trainyard.workers.volumes.base import MountFailed, PartRef, Say, VolumeMount, unmount

RCLONE = "rclone"
REMOTE = "TRAINYARD"
MOUNT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 600.0  # how long the end of a part waits for rclone to upload its cached writes
FLUSH_POLL_S = 0.1
FLUSH_SETTLE_S = 0.3
WRITE_BACK_S = 1  # a closed file goes up this soon (rclone's default, 5 s, delays durability)
RC_TIMEOUT_S = 5.0
SAS_VALID_S = 8 * 86400  # a signed URL made from an account key outlives the longest job (7 d)
DIR_CACHE_S = 5  # how stale a listing may be: files other nodes of a gang write show up this fast
LOG_TAIL_BYTES = 2000
_PASSED = ("PATH", "HOME", "TMPDIR", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _conf(name: str) -> str:
    return f"RCLONE_CONFIG_{REMOTE}_{name}"


def s3_config(env: dict[str, str]) -> dict[str, str]:
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    conf = {_conf("TYPE"): "s3", _conf("PROVIDER"): "Other" if endpoint else "AWS", _conf("NO_CHECK_BUCKET"): "true"}
    if endpoint:
        conf[_conf("ENDPOINT")] = endpoint
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        conf[_conf("REGION")] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        conf[_conf("ACCESS_KEY_ID")] = env["AWS_ACCESS_KEY_ID"]
        conf[_conf("SECRET_ACCESS_KEY")] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            conf[_conf("SESSION_TOKEN")] = env["AWS_SESSION_TOKEN"]
    else:
        conf[_conf("ENV_AUTH")] = "true"  # instance roles, profiles
    return conf


def azure_config(env: dict[str, str], container: str) -> dict[str, str]:
    """rclone's azureblob remote from AZURE_STORAGE_CONNECTION_STRING (or ACCOUNT_NAME + ACCOUNT_KEY).

    rclone 1.60 takes an account key only for https://<account>.<suffix> endpoints; for any other
    endpoint (an emulator, a private link with a path) it gets a container SAS signed here with the key.
    """
    parts = dict(
        item.split("=", 1) for item in env.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";") if "=" in item
    )
    account = parts.get("AccountName") or env.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    key = parts.get("AccountKey") or env.get("AZURE_STORAGE_ACCOUNT_KEY", "")
    endpoint = (parts.get("BlobEndpoint") or f"https://{account}.blob.core.windows.net").rstrip("/")
    conf = {_conf("TYPE"): "azureblob"}
    if parts.get("SharedAccessSignature"):
        conf[_conf("SAS_URL")] = f"{endpoint}/{container}?{parts['SharedAccessSignature']}"
        return conf
    host = urlsplit(endpoint)
    if host.scheme == "https" and host.hostname and host.hostname.startswith(f"{account}.") and not host.path:
        conf.update(
            {_conf("ACCOUNT"): account, _conf("KEY"): key, _conf("ENDPOINT"): host.hostname.removeprefix(f"{account}.")}
        )
        return conf
    conf[_conf("SAS_URL")] = f"{endpoint}/{container}?{_container_sas(account, key, container)}"
    return conf


def _container_sas(account: str, key: str, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    permission = ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True)
    expiry = datetime.now(UTC) + timedelta(seconds=SAS_VALID_S)
    return str(generate_container_sas(account, container, account_key=key, permission=permission, expiry=expiry))


def rclone_environment(uri: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of `rclone mount` for `uri`: the remote defined in RCLONE_CONFIG_* variables.

    Nothing else of the node's or the job's environment goes in (the AWS SDK in rclone refuses
    an AWS_CA_BUNDLE, for one), except the AWS_* variables its env_auth reads.
    """
    base = {k: env[k] for k in _PASSED if k in env}
    if datarefs.scheme_of(uri) == "s3":
        conf = s3_config(env)
        if conf.get(_conf("ENV_AUTH")):
            base.update({k: v for k, v in env.items() if k.startswith("AWS_") and k != "AWS_CA_BUNDLE"})
        return {**base, **conf}
    return {**base, **azure_config(env, uri.split("://", 1)[1].split("/", 1)[0])}


def remote_path(uri: str) -> str:
    parts = uri.split("://", 1)[1].strip("/")
    return f"{REMOTE}:{parts}"


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RcloneControl:
    """rclone's remote control on a loopback port with a random password (given through the environment).

    The end of a part asks it whether the write cache is empty: rclone does not upload pending
    files when it is unmounted (it would at its next start with the same cache), so unmounting
    before then would lose the job's last writes.
    """

    def __init__(self) -> None:
        self.port = _free_loopback_port()
        self.password = secrets.token_hex(16)

    def environment(self) -> dict[str, str]:
        return {
            "RCLONE_RC": "true",
            "RCLONE_RC_ADDR": f"127.0.0.1:{self.port}",
            "RCLONE_RC_USER": "trainyard",
            "RCLONE_RC_PASS": self.password,
        }

    def vfs_stats(self) -> dict[str, object]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/vfs/stats", data=b"{}", method="POST")
        token = base64.b64encode(f"trainyard:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=RC_TIMEOUT_S) as response:
            stats: dict[str, object] = json.load(response)
        return stats

    def pending_uploads(self) -> tuple[int, int]:
        """(files still to upload, files whose upload failed) in rclone's write cache."""
        cache = self.vfs_stats().get("diskCache") or {}
        assert isinstance(cache, dict)
        pending = int(cache.get("uploadsInProgress", 0)) + int(cache.get("uploadsQueued", 0))
        return pending, int(cache.get("erroredFiles", 0))


class BlobVolume(VolumeMount):
    def __init__(self, spec: VolumeSpec, part: PartRef):
        super().__init__(spec, part)
        self.cache_dir = part.root / f".rclone-{spec.name}"
        self.log_file = part.root / f".rclone-{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.control = RcloneControl()

    def argv(self) -> list[str]:
        argv = [
            RCLONE,
            "mount",
            remote_path(str(self.spec.uri)),
            str(self.mount_point),
            "--config",
            str(self.part.root / ".rclone.conf"),  # none: the remote is in the environment
            "--vfs-cache-mode",
            "writes",
            "--vfs-write-back",
            f"{WRITE_BACK_S}s",
            "--cache-dir",
            str(self.cache_dir),
            "--dir-cache-time",
            f"{DIR_CACHE_S}s",
            "--allow-other",
            "--log-file",
            str(self.log_file),
            "--log-level",
            "NOTICE",
        ]
        return [*argv, "--read-only"] if self.spec.read_only else argv

    def mount(self) -> Path:
        if shutil.which(RCLONE) is None:
            raise MountFailed(self.spec.name, "rclone is not installed on this node (scripts/install-rclone.sh)")
        if not os.path.exists("/dev/fuse"):
            raise MountFailed(self.spec.name, "this node has no /dev/fuse: use a sync volume instead")
        self.mount_point.mkdir(parents=True, exist_ok=True)
        env = rclone_environment(str(self.spec.uri), self.part.env)
        self._check_reachable(env)
        env = {**env, **self.control.environment()}
        self.process = subprocess.Popen(
            self.argv(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(self.mount_point):
            if self.process.poll() is not None:
                raise MountFailed(
                    self.spec.name, f"rclone mount exited with {self.process.returncode}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self._stop_process()
                raise MountFailed(
                    self.spec.name, f"rclone mount not ready after {MOUNT_TIMEOUT_S:.0f} s: {self._log_tail()}"
                )
            time.sleep(0.05)
        return self.mount_point

    def _check_reachable(self, env: dict[str, str]) -> None:
        """rclone mounts before it asks the store anything: list the volume's top level first.

        A refused credential or a missing bucket fails here with rclone's own message (a prefix
        with nothing under it yet is fine: an output volume starts empty).
        """
        argv = [
            RCLONE,
            "lsf",
            remote_path(str(self.spec.uri)),
            "--max-depth",
            "1",
            "--config",
            str(self.part.root / ".rclone.conf"),
            "--retries",
            "1",
            "--low-level-retries",
            "2",
        ]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise MountFailed(
                self.spec.name, f"{self.spec.uri} did not answer within {MOUNT_TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "NOTICE" not in line]
            message = " | ".join(line.strip() for line in lines[-3:]) or f"exit status {done.returncode}"
            raise MountFailed(self.spec.name, f"{self.spec.uri} cannot be listed: {message}")

    def _log_tail(self) -> str:
        try:
            text = self.log_file.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace").strip()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.splitlines()[-5:]) or "(no message)"

    def _stop_process(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_for_uploads(self) -> str | None:
        """Block until rclone has uploaded every file the job closed; the problem, or None.

        Clean means no upload queued and no file marked dirty in the cache's metadata, twice in a
        row FLUSH_SETTLE_S apart: the kernel's FUSE release of a file the job closed reaches rclone
        a moment after the job's close(), and only then is its upload queued.
        """
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        clean_since: float | None = None
        while True:
            try:
                pending, errored = self.control.pending_uploads()
            except (OSError, ValueError) as exc:
                return f"rclone's remote control did not answer ({exc}): the last writes may be lost"
            dirty = self._dirty_files()
            if pending == 0 and not dirty:
                clean_since = clean_since or time.monotonic()
                if time.monotonic() - clean_since >= FLUSH_SETTLE_S:
                    return f"{errored} file(s) could not be uploaded: {self._log_tail()}" if errored else None
            else:
                clean_since = None
            pending = max(pending, len(dirty))
            if time.monotonic() > deadline:
                return f"{pending} file(s) still uploading after {FLUSH_TIMEOUT_S:.0f} s"
            time.sleep(FLUSH_POLL_S)

    def _dirty_files(self) -> list[str]:
        """Files rclone's cache metadata still marks dirty (written, not yet in the store)."""
        dirty = []
        for meta in (self.cache_dir / "vfsMeta").rglob("*"):
            try:
                if meta.is_file() and json.loads(meta.read_text()).get("Dirty"):
                    dirty.append(meta.name)
            except (OSError, ValueError):
                continue  # being rewritten: looked at again at the next poll
        return dirty

    def release(self, say: Say) -> list[str]:
        problems = []
        alive = self.process is not None and self.process.poll() is None
        if alive and not self.spec.read_only and os.path.ismount(self.mount_point):
            problem = self.wait_for_uploads()
            if problem:
                problems.append(f"volume {self.spec.name}: {problem}")
        if os.path.ismount(self.mount_point):
            problem = unmount(self.mount_point, fuse=True)
            if problem:
                problems.append(f"volume {self.spec.name}: {problem}")
        if self.process is not None:
            try:
                self.process.wait(timeout=RC_TIMEOUT_S * 2)  # unmounted: rclone exits
            except subprocess.TimeoutExpired:
                self._stop_process()
        if not os.path.ismount(self.mount_point):
            shutil.rmtree(self.mount_point, ignore_errors=True)
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        return problems
