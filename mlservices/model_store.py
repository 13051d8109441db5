"""Where weights come from: a local folder, a Hub id at a pinned commit, or a URL.

``locate(ModelSource(...))`` returns a folder holding verified weights:

- a local folder is used as is; its weights file must be safetensors or ONNX
  (pickle checkpoints are refused) and, when ``sha256`` is pinned, hash to it;
- a Hub id needs ``revision`` pinned to a 40-hex commit. The snapshot lives in
  the model store (``$MLSERVICES_MODEL_DIR``, default
  ``~/.cache/mlservices/models``); if absent it is downloaded, the weights are
  checked against the pinned ``sha256`` (or, unpinned, the sha256 the Hub
  declares for that commit) and the hash is written to a manifest that every
  later load checks again. Offline, or with ``MLSERVICES_OFFLINE=1``, a missing
  snapshot is a ``ModelNotInstalled`` error that says how to install it.
- an ``https://`` (or ``http://``) URL of one weights file needs ``sha256``
  pinned: the file is downloaded once into the store, checked against the pin
  before it is kept, and checked again on every load (the same manifest).
  Offline it is the same ``ModelNotInstalled`` error::

      locate(ModelSource("https://example.org/u2netp.onnx", weights="u2netp.onnx", sha256="309c…"))

The returned ``Located.version`` names the weights for people: ``id@commit``
for Hub models, ``folder@sha256:<12 hex>`` for local folders,
``file@sha256:<12 hex>`` for URLs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .errors import IntegrityError, InvalidInput, ModelNotInstalled

MANIFEST = "mlservices-manifest.json"
SAFE_SUFFIXES = (".safetensors", ".onnx")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_DOWNLOAD_BYTES = 4 << 30  # no weights file of ours comes near; a runaway response stops here


@dataclasses.dataclass(frozen=True)
class ModelSource:
    ref: str  # a local folder, or a Hub id such as "org/name"
    revision: str | None = None  # the Hub commit (40 hex); ignored for folders
    weights: str = "model.safetensors"  # the weights file inside the folder
    sha256: str | None = None  # pin the weights' hash
    files: tuple[str, ...] = ("*.json", "*.txt", "*.model", "*.safetensors", "*.onnx")
    install_hint: str = ""  # how to install it, shown in errors


@dataclasses.dataclass(frozen=True)
class Located:
    path: Path
    version: str
    sha256: str


def store_dir() -> Path:
    return Path(os.environ.get("MLSERVICES_MODEL_DIR") or Path.home() / ".cache" / "mlservices" / "models")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_local(ref: str) -> bool:
    """Paths start with . / ~, exist, or have more parts than a Hub "org/name"."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or Path(ref).expanduser().exists()


def is_url(ref: str) -> bool:
    return ref.startswith(("https://", "http://"))


def locate(source: ModelSource) -> Located:
    if is_url(source.ref):
        return _url(source)
    if is_local(source.ref):
        return _local(source)
    return _hub(source)


def _check_weights_name(source: ModelSource) -> None:
    if not source.weights.endswith(SAFE_SUFFIXES):
        raise InvalidInput(
            f"weights file {source.weights!r}: only safetensors or ONNX weights are loaded "
            "(pickle-based checkpoints can run code when opened); convert it to safetensors"
        )


def _verify(path: Path, expected: str | None, what: str) -> str:
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        raise IntegrityError(
            f"{what}: sha256 is {actual}, expected {expected.lower()}; the file is corrupt or "
            "not the pinned version. Delete it and install again, or fix the pinned sha256"
        )
    return actual


def _local(source: ModelSource) -> Located:
    _check_weights_name(source)
    folder = Path(source.ref).expanduser().resolve()
    hint = f" {source.install_hint}" if source.install_hint else ""
    if not folder.exists():
        raise ModelNotInstalled(f"model folder {folder} does not exist.{hint}")
    weights = folder / source.weights if folder.is_dir() else folder
    if not weights.is_file():
        pickles = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES] if folder.is_dir() else []
        extra = (
            f" It holds {', '.join(pickles)}, a pickle format this project refuses to load; "
            "convert it to safetensors." if pickles else ""
        )
        raise ModelNotInstalled(f"no {source.weights} in {folder}.{extra}{hint}")
    pinned = source.sha256 or _manifest_sha(weights.parent, source.weights)
    digest = _verify(weights, pinned, str(weights))
    return Located(weights.parent, f"{weights.parent.name}@sha256:{digest[:12]}", digest)


def _manifest_sha(folder: Path, weights: str) -> str | None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("files", {}).get(weights)


def snapshot_dir(source: ModelSource) -> Path:
    if is_url(source.ref):
        return store_dir() / "urls" / f"{source.weights}-{(source.sha256 or 'unpinned').lower()[:16]}"
    return store_dir() / source.ref.replace("/", "--") / (source.revision or "unpinned")


def _hub(source: ModelSource) -> Located:
    _check_weights_name(source)
    if not source.revision or not COMMIT.match(source.revision):
        raise InvalidInput(
            f"model {source.ref!r}: revision={source.revision!r}; pin the 40-hex commit "
            "(branches and tags move under you). Find it on the model's 'Files' page"
        )
    folder = snapshot_dir(source)
    if not (folder / MANIFEST).is_file():
        download(source)
    weights = folder / source.weights
    digest = _verify(weights, source.sha256 or _manifest_sha(folder, source.weights), str(weights))
    return Located(folder, f"{source.ref}@{source.revision[:7]}", digest)


def offline() -> bool:
    """True when downloads are off: ``MLSERVICES_OFFLINE`` or ``HF_HUB_OFFLINE`` set, and not to 0/false/no/off."""
    return any(
        os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")
        for name in ("MLSERVICES_OFFLINE", "HF_HUB_OFFLINE")
    )


def _hub_unreachable(ref: str, revision: str, exc: Exception, hint: str) -> ModelNotInstalled:
    detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
    return ModelNotInstalled(
        f"could not download {ref}@{revision[:7]} from the Hugging Face Hub ({type(exc).__name__}: {detail}). "
        f"Is this machine offline?{hint}"
    )


def hub_files(ref: str, revision: str, patterns: tuple[str, ...], hint: str = "") -> dict[str, tuple[int, str | None]]:
    """``{path: (size, sha256 or None)}`` of the files matching ``patterns`` in the Hub repo ``ref`` at ``revision``.

    One call to the Hub, before anything is downloaded; a Hub that cannot be
    reached (offline, unknown repo, rate limits) is a ``ModelNotInstalled``
    ending with ``hint``. The sha256 is the one the Hub declares (LFS files).
    """
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        info = HfApi().model_info(ref, revision=revision, files_metadata=True)
        siblings = filter_repo_objects(info.siblings or [], allow_patterns=list(patterns), key=lambda s: s.rfilename)
        files = {s.rfilename: (s.size or 0, s.lfs.sha256 if s.lfs else None) for s in siblings}
    except Exception as exc:  # offline, unknown repo, rate limits: all end the same way
        raise _hub_unreachable(ref, revision, exc, hint) from exc
    return files


def fetch_snapshot(
    ref: str, revision: str, into: Path, patterns: tuple[str, ...], expected: dict[str, str | None], hint: str = ""
) -> dict[str, str]:
    """Download the Hub snapshot ``ref@revision`` (files matching ``patterns``) into the folder ``into``.

    Every safetensors/ONNX file downloaded must hash to its sha256 in
    ``expected`` (from ``hub_files``, or pinned); returns ``{path: sha256}`` of
    those weights. A failed download is a ``ModelNotInstalled`` ending with
    ``hint``; a hash that differs, or a weights file without an expected
    sha256, is an ``IntegrityError``.
    """
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(ref, revision=revision, local_dir=into, allow_patterns=list(patterns))
    except Exception as exc:  # offline, unknown repo, rate limits: all end the same way
        raise _hub_unreachable(ref, revision, exc, hint) from exc
    shutil.rmtree(into / ".cache", ignore_errors=True)
    digests = {}
    for path in sorted(p for p in into.rglob("*") if p.suffix in SAFE_SUFFIXES):
        name = path.relative_to(into).as_posix()
        if not expected.get(name):
            raise IntegrityError(f"the Hub declares no sha256 for {ref}/{name}; pin one with sha256=")
        digests[name] = _verify(path, expected[name], f"{ref}/{name}")
    return digests


def download(source: ModelSource) -> Path:
    """Fetch a pinned Hub snapshot into the store, verifying the weights' hash."""
    folder = snapshot_dir(source)
    hint = f" {source.install_hint}" if source.install_hint else ""
    if offline():
        raise ModelNotInstalled(
            f"model {source.ref}@{source.revision[:7]} is not in the model store ({folder}) and "
            f"downloads are off (MLSERVICES_OFFLINE/HF_HUB_OFFLINE is set).{hint}"
        )
    expected = {name: sha for name, (_, sha) in hub_files(source.ref, source.revision, source.files, hint).items()}
    if source.sha256:
        expected[source.weights] = source.sha256.lower()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
    try:
        digests = fetch_snapshot(source.ref, source.revision, staging, source.files, expected, hint)
        if source.weights not in digests:
            raise ModelNotInstalled(f"{source.ref}@{source.revision[:7]} has no {source.weights}.{hint}")
        (staging / MANIFEST).write_text(
            json.dumps(
                {"repo": source.ref, "revision": source.revision, "files": {source.weights: digests[source.weights]}},
                indent=2,
            )
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _url(source: ModelSource) -> Located:
    _check_weights_name(source)
    if not source.sha256 or not SHA256.match(source.sha256):
        raise InvalidInput(
            f"model {source.ref}: sha256={source.sha256!r}; a URL needs the file's 64-hex sha256 pinned "
            "(a URL can serve different bytes tomorrow)"
        )
    folder = snapshot_dir(source)
    weights = folder / source.weights
    if not (folder / MANIFEST).is_file() or not weights.is_file():
        download_url(source)
    digest = _verify(weights, source.sha256, str(weights))
    return Located(folder, f"{source.weights}@sha256:{digest[:12]}", digest)


def download_url(source: ModelSource) -> Path:
    """Fetch one weights file by URL into the store; kept only if it hashes to the pin."""
    folder = snapshot_dir(source)
    hint = f" {source.install_hint}" if source.install_hint else ""
    if os.environ.get("MLSERVICES_OFFLINE"):
        raise ModelNotInstalled(
            f"model {source.weights} is not in the model store ({folder}) and downloads are off "
            f"(MLSERVICES_OFFLINE is set).{hint}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
    try:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(source.ref, timeout=60) as response, open(staging / source.weights, "wb") as f:
                size = 0
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise IntegrityError(f"{source.ref} sent more than {MAX_DOWNLOAD_BYTES:,} bytes; stopped")
                    digest.update(chunk)
                    f.write(chunk)
        except (OSError, ValueError) as exc:  # offline, DNS, HTTP errors, refused connections
            raise ModelNotInstalled(
                f"could not download {source.ref} ({type(exc).__name__}: {str(exc)[:200] or 'no detail'}). "
                f"Is this machine offline?{hint}"
            ) from exc
        if digest.hexdigest() != source.sha256.lower():
            raise IntegrityError(
                f"{source.ref}: sha256 is {digest.hexdigest()}, expected {source.sha256.lower()}; "
                "the download is corrupt or the file changed. Nothing was kept; fix the pinned sha256 "
                "only if you trust the new file"
            )
        (staging / MANIFEST).write_text(
            json.dumps({"url": source.ref, "files": {source.weights: digest.hexdigest()}}, indent=2)
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
