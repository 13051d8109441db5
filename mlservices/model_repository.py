"""The model store: every version of every serving's model, verified, laid out like a model repository.

Each stored version is a folder ``<root>/<serving>/<version>/`` holding the
weights and the manifest ``mlservices-manifest.json`` (``model_store.MANIFEST``)::

    {"serving": "sentiment", "version": "v2",
     "source": {"kind": "upload", "name": "model.zip"},
     "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>", ...},
     "size": 90871234, "created_at": "2026-11-21T23:10:00+00:00"}

``files`` covers every file of the version. The root is
``$MLSERVICES_MODEL_REPOSITORY``, else ``model_store.store_dir() / "repository"``::

    repo = Repository()
    stored = repo.add("sentiment", "v2", "exported/model.zip")      # or a folder, .onnx, .safetensors
    stored = repo.pull("sentiment", "org/name", "<40-hex commit>")  # from the Hugging Face Hub
    repo.verify("sentiment", "v2")                                  # re-hash every file
    mlservices.build("sentiment", model=str(stored.path))           # serve it

What ``add`` accepts: one ``.onnx`` file (stored as ``model.onnx``), one
``.safetensors`` file (stored as ``model.safetensors``), a folder (a Hugging
Face folder, or one holding ``model.onnx``), or an archive of such a folder
(``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.xz``, ``.tar.bz2``). A
single top-level folder (people zip the folder itself) is stripped.

It refuses, with ``InvalidInput`` and leaving nothing behind: pickle weights
(``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``: convert them
to safetensors), Python files (remote code is never run), no safetensors/ONNX
weights at the top of the folder, weights whose bytes are not
safetensors/ONNX, archive members with absolute paths, ``..`` or a type other
than file or folder (links, devices, fifos), symlinks or special files in a
folder, more than ``MAX_FILES`` files or ``MAX_BYTES`` bytes (the env
settings ``MLSERVICES_MODEL_MAX_FILES`` and ``MLSERVICES_MODEL_MAX_BYTES``
override them; declared sizes are checked before anything is written, and
bytes are counted while writing), and a version name already taken.

A version is staged in a hidden folder under the root and renamed into place,
so readers see all of it or nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import IntegrityError, InvalidInput, ModelNotInstalled
from .model_store import (
    COMMIT,
    MANIFEST,
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    fetch_snapshot,
    hub_files,
    offline,
    sha256_of,
    store_dir,
)

MAX_BYTES = 20 << 30  # env MLSERVICES_MODEL_MAX_BYTES: the most bytes one version may hold, unpacked
MAX_FILES = 1000  # env MLSERVICES_MODEL_MAX_FILES: the most files one version may hold
HUB_FILES = ("*.json", "*.txt", "*.model", "*.safetensors", "*.onnx")  # what pull downloads
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
CODE_SUFFIXES = (".py", ".pyc")
IGNORED = ("__MACOSX", ".DS_Store")  # what zipping a folder on macOS adds; never copied
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHUNK = 1 << 20


def repository_dir() -> Path:
    """``$MLSERVICES_MODEL_REPOSITORY``, else ``store_dir() / "repository"``."""
    return Path(os.environ.get("MLSERVICES_MODEL_REPOSITORY") or store_dir() / "repository")


def limits() -> tuple[int, int]:
    """(max bytes, max files) of one version: the env settings, else ``MAX_BYTES`` and ``MAX_FILES``."""
    return _env_int("MLSERVICES_MODEL_MAX_BYTES", MAX_BYTES), _env_int("MLSERVICES_MODEL_MAX_FILES", MAX_FILES)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"{name}={value!r}: set it to a positive whole number, or unset it for {default:,}")
    return int(value)


def check_name(name: str, what: str = "version") -> str:
    """``name`` if it is a valid serving or version name; ``InvalidInput`` saying the rule otherwise."""
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(
            f"{what} name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (no '@', '/' or spaces), e.g. v2 or 2026-11-21"
        )
    return name


@dataclasses.dataclass(frozen=True)
class StoredVersion:
    """One stored version: its folder and what its manifest says."""

    serving: str
    version: str
    path: Path
    files: dict[str, str]  # relative path -> sha256, every file but the manifest
    size: int
    source: dict
    created_at: str

    @property
    def sha256(self) -> str | dict[str, str]:
        """The weights' sha256 for a one-file version; for a folder, ``{file: sha256}``."""
        if len(self.files) == 1:
            return next(iter(self.files.values()))
        return dict(self.files)

    def as_json(self) -> dict:
        return {
            "version": self.version,
            "serving": self.serving,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "created_at": self.created_at,
            "path": str(self.path),
        }


class Repository:
    """The versions stored under ``root`` (default ``repository_dir()``)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else repository_dir()

    def add(self, serving: str, version: str, path: Path | str, source: dict | None = None) -> StoredVersion:
        """Store ``path`` (a .onnx or .safetensors file, a folder, or an archive) as ``serving``'s ``version``."""
        path = Path(path).expanduser()
        name = path.name.lower()
        if not path.exists():
            raise InvalidInput(f"{path} does not exist; give a .onnx or .safetensors file, a folder or an archive")
        if path.is_dir():
            fill, default = _copy_folder(path), {"kind": "path", "path": str(path)}
        elif name.endswith(ARCHIVE_SUFFIXES):
            fill, default = _unpack(path), {"kind": "archive", "name": path.name}
        elif name.endswith(SAFE_SUFFIXES):
            target = "model.onnx" if name.endswith(".onnx") else "model.safetensors"
            fill, default = _copy_file(path, target), {"kind": "path", "path": str(path)}
        elif name.endswith(PICKLE_SUFFIXES):
            raise InvalidInput(_pickle_message(path.name))
        else:
            raise InvalidInput(
                f"{path.name}: give a .onnx or .safetensors file, a folder, or an archive "
                f"({', '.join(ARCHIVE_SUFFIXES)}) of a Hugging Face folder"
            )
        return self._store(serving, version, fill, source or default)

    def pull(self, serving: str, ref: str, revision: str, version: str | None = None) -> StoredVersion:
        """Download ``ref`` at the 40-hex commit ``revision`` from the Hub and store it (default name: 12 hex)."""
        if not isinstance(revision, str) or not COMMIT.match(revision):
            raise InvalidInput(
                f"model {ref!r}: revision={revision!r}; pin the 40-hex commit (branches and tags move "
                "under you). Find it on the model's 'Files' page"
            )
        version = version or revision[:12]
        self._folder(serving, version)  # valid names, before any download
        how = (
            f"; import a local copy with `python manage.py models import {serving} PATH --version NAME` "
            "(PATH: a folder, .onnx/.safetensors file or .zip/.tar.gz of the model)"
        )
        if offline():
            raise ModelNotInstalled(
                f"the Hugging Face Hub is unreachable (downloads are off: MLSERVICES_OFFLINE or "
                f"HF_HUB_OFFLINE is set), so {ref}@{revision[:7]} cannot be pulled{how}"
            )

        def fill(into: Path) -> None:
            try:
                files = hub_files(ref, revision, HUB_FILES)
                budget = _Budget(f"{ref}@{revision[:7]}")
                for size, _ in files.values():  # the declared sizes, before downloading a byte
                    budget.file()
                    budget.spend(size)
                fetch_snapshot(ref, revision, into, HUB_FILES, {name: sha for name, (_, sha) in files.items()})
            except ModelNotInstalled as exc:
                cause = exc.__cause__
                detail = f"{type(cause).__name__}: {(str(cause).splitlines() or ['no detail'])[0][:200]}"
                raise ModelNotInstalled(
                    f"the Hugging Face Hub is unreachable or refused {ref}@{revision[:7]} ({detail}){how}"
                ) from exc

        return self._store(serving, version, fill, {"kind": "hub", "ref": ref, "revision": revision})

    def get(self, serving: str, version: str) -> StoredVersion:
        """The stored version as its manifest describes it (no re-hash); ``ModelNotInstalled`` if absent."""
        folder = self._folder(serving, version)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            known = ", ".join(v.version for v in self.versions(serving)) or "none"
            raise ModelNotInstalled(
                f"version {version} of {serving} is not in the model store ({self.root}); stored versions: "
                f"{known}. Import it with `python manage.py models import {serving} PATH --version {version}`"
            )
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return StoredVersion(
                serving,
                version,
                folder,
                dict(data["files"]),
                int(data["size"]),
                dict(data["source"]),
                str(data["created_at"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc}); remove version {version} of "
                f"{serving} and import it again"
            ) from exc

    def verify(self, serving: str, version: str) -> StoredVersion:
        """``get``, then re-hash every file; a changed, missing or extra file is an ``IntegrityError``."""
        stored = self.get(serving, version)
        fix = f"remove version {version} of {serving} and import it again"
        found = _tree(stored.path)
        for relpath, expected in sorted(stored.files.items()):
            if relpath not in found:
                raise IntegrityError(f"{serving} {version}: {relpath} is missing from {stored.path}; {fix}")
            actual = sha256_of(stored.path / relpath)
            if actual != expected:
                raise IntegrityError(
                    f"{serving} {version}: {relpath} has sha256 {actual}, the manifest says {expected}; "
                    f"the stored copy is corrupt or was edited; {fix}"
                )
        extra = sorted(set(found) - set(stored.files))
        if extra:
            raise IntegrityError(f"{serving} {version}: {extra[0]} is not in the manifest of {stored.path}; {fix}")
        return stored

    def versions(self, serving: str) -> list[StoredVersion]:
        """The stored versions of ``serving``, oldest first ([] when none)."""
        folder = self.root / check_name(serving, "serving")
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if NAME.match(p.name) and (p / MANIFEST).is_file()]
        return sorted((self.get(serving, name) for name in names), key=lambda v: (v.created_at, v.version))

    def remove(self, serving: str, version: str) -> None:
        """Delete a stored version (moved aside first, so readers never see half of it)."""
        self.get(serving, version)
        trash = Path(tempfile.mkdtemp(prefix=".removing-", dir=self.root))
        try:
            self._folder(serving, version).rename(trash / version)
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def _folder(self, serving: str, version: str) -> Path:
        return self.root / check_name(serving, "serving") / check_name(version)

    def _store(self, serving: str, version: str, fill: Callable[[Path], None], source: dict) -> StoredVersion:
        target = self._folder(serving, version)
        taken = f"version {version} of {serving} exists; pick another name"
        if target.exists():
            raise InvalidInput(taken)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            content = staging / "content"
            content.mkdir()
            fill(content)
            entries = list(content.iterdir())
            if len(entries) == 1 and entries[0].is_dir():  # people zip the folder itself
                content = entries[0]
            files = _check_version(content)
            manifest = {
                "serving": serving,
                "version": version,
                "source": source,
                "files": files,
                "size": sum((content / relpath).stat().st_size for relpath in files),
                "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            (content / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            target.parent.mkdir(exist_ok=True)
            try:
                content.rename(target)
            except OSError as exc:  # another add won the race for this name
                raise InvalidInput(taken) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(serving, version)


def _pickle_message(name: str) -> str:
    return (
        f"{name} is a pickle file, which can run code when loaded; only safetensors and ONNX weights are "
        "accepted. Convert it to safetensors (model.save_pretrained(folder, safe_serialization=True)) or "
        "export it to ONNX"
    )


def _member_path(name: str, origin: str) -> PurePosixPath | None:
    """The safe relative path of an archive member or folder entry; None for junk to skip."""
    if "\x00" in name:
        raise InvalidInput(f"{origin}: {name!r} has a NUL in its name; refused")
    posix = name.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if posix.startswith("/") or (parts and parts[0].endswith(":")):
        raise InvalidInput(f"{origin}: {name!r} is an absolute path; archive members must be relative")
    if ".." in parts:
        raise InvalidInput(f"{origin}: {name!r} contains '..'; members must stay inside the archive's folder")
    if not parts or any(p in IGNORED for p in parts):
        return None
    lowered = parts[-1].lower()
    if lowered.endswith(PICKLE_SUFFIXES):
        raise InvalidInput(f"{origin}: {_pickle_message(name)}")
    if lowered.endswith(CODE_SUFFIXES):
        raise InvalidInput(
            f"{origin}: {name} is Python code; remote code is never run, so models that need it "
            "(trust_remote_code) are refused. Use a model whose architecture transformers ships"
        )
    return PurePosixPath(*parts)


class _Budget:
    """Counts files and bytes against the limits; a version over either is refused."""

    def __init__(self, origin: str):
        self.origin = origin
        self.max_bytes, self.max_files = limits()
        self.files = self.bytes = 0

    def file(self) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise InvalidInput(
                f"{self.origin} holds more than {self.max_files:,} files (MLSERVICES_MODEL_MAX_FILES); refused"
            )

    def check(self, size: int) -> None:
        """Refuse ``size`` more bytes if they would go over the limit (counts nothing)."""
        if self.bytes + size > self.max_bytes:
            raise InvalidInput(
                f"{self.origin} unpacks to more than {self.max_bytes:,} bytes (MLSERVICES_MODEL_MAX_BYTES); "
                "refused (raise the limit if the model really is that big)"
            )

    def spend(self, size: int) -> None:
        self.check(size)
        self.bytes += size


def _write(source: BinaryIO, dest: Path, budget: _Budget) -> None:
    """Copy ``source`` to the new file ``dest``, counting every byte against ``budget``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        while chunk := source.read(CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)


def _copy_file(path: Path, target: str) -> Callable[[Path], None]:
    def fill(into: Path) -> None:
        budget = _Budget(path.name)
        budget.file()
        with open(path, "rb") as f:
            _write(f, into / target, budget)

    return fill


def _copy_folder(folder: Path) -> Callable[[Path], None]:
    def fill(into: Path) -> None:
        budget, declared, entries = _Budget(str(folder)), _Budget(str(folder)), []
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                entry = Path(dirpath) / name
                mode = entry.lstat().st_mode
                if stat.S_ISLNK(mode):
                    raise InvalidInput(
                        f"{entry} is a symbolic link; links are refused. Copy the folder with the links "
                        "resolved (cp -rL) and import the copy"
                    )
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    raise InvalidInput(f"{entry} is not a regular file or folder; refused")
            top = dirpath == str(folder)  # a top-level .cache/ is what `hf download --local-dir` leaves
            dirnames[:] = [d for d in dirnames if d not in IGNORED and not (top and d == ".cache")]
            for name in filenames:
                entry = Path(dirpath) / name
                relpath = _member_path(entry.relative_to(folder).as_posix(), str(folder))
                if relpath is not None and relpath.as_posix() != MANIFEST:
                    declared.file()
                    declared.spend(entry.stat().st_size)
                    entries.append((entry, relpath))
        for entry, relpath in entries:
            budget.file()
            with open(entry, "rb") as f:
                _write(f, into / relpath, budget)

    return fill


def _unpack(archive: Path) -> Callable[[Path], None]:
    def fill(into: Path) -> None:
        try:
            if archive.name.lower().endswith(".zip"):
                _unzip(archive, into)
            else:
                _untar(archive, into)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
            raise InvalidInput(
                f"{archive.name}: not a readable archive ({type(exc).__name__}: {str(exc)[:200] or 'no detail'}); "
                "re-create it with zip or tar"
            ) from exc

    return fill


def _unzip(archive: Path, into: Path) -> None:
    budget, declared = _Budget(archive.name), _Budget(archive.name)
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():  # the central directory: every check before anything is written
            relpath = _member_path(info.filename, archive.name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InvalidInput(
                    f"{archive.name}: {info.filename} is a {_kind(kind)}; only files and folders are accepted"
                )
            if info.flag_bits & 0x1:
                raise InvalidInput(
                    f"{archive.name}: {info.filename} is encrypted; re-create the archive without a password"
                )
            if relpath is None or info.is_dir():
                continue
            declared.file()
            declared.spend(info.file_size)
            members.append((info, relpath))
        for info, relpath in members:
            budget.file()
            with zf.open(info) as source:
                _write_member(source, into, relpath, archive.name, budget)


def _untar(archive: Path, into: Path) -> None:
    budget = _Budget(archive.name)
    with tarfile.open(archive, "r|*") as tf:  # a stream: members are checked and written one by one
        for member in tf:
            relpath = _member_path(member.name, archive.name)
            if member.isdir():
                continue
            if not member.isreg():
                raise InvalidInput(
                    f"{archive.name}: {member.name} is a {_tar_kind(member)}; only files and folders are accepted"
                )
            if relpath is None:
                continue
            budget.file()
            budget.check(member.size)  # its declared size, before writing a byte
            _write_member(tf.extractfile(member), into, relpath, archive.name, budget)


def _write_member(source: BinaryIO, into: Path, relpath: PurePosixPath, origin: str, budget: _Budget) -> None:
    try:
        _write(source, into / relpath, budget)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise InvalidInput(f"{origin}: {relpath} appears twice or clashes with a folder; refused") from exc


def _kind(mode: int) -> str:
    return {stat.S_IFLNK: "symbolic link", stat.S_IFCHR: "device", stat.S_IFBLK: "device", stat.S_IFIFO: "fifo"}.get(
        mode, "special file"
    )


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    return "fifo" if member.isfifo() else "special file"


def _tree(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as POSIX relative paths (links and special files too)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            relpath = (Path(dirpath) / name).relative_to(folder).as_posix()
            if relpath != MANIFEST:
                found.append(relpath)
    return sorted(found)


def _check_version(content: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a staged version, refused without top-level weights or with fake ones."""
    files = _tree(content)
    weights = [f for f in files if "/" not in f and f.lower().endswith(SAFE_SUFFIXES)]
    if not weights:
        shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "") or "nothing"
        raise InvalidInput(
            f"no model weights: expected a .safetensors or .onnx file at the top of the folder (e.g. "
            f"model.safetensors or model.onnx), found {shown}"
        )
    for name in weights:
        _sniff(content / name, name)
    return {relpath: sha256_of(content / relpath) for relpath in files}


def _sniff(path: Path, name: str) -> None:
    """Refuse a weights file whose first bytes are not what its suffix claims (e.g. a renamed pickle)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if name.lower().endswith(".onnx"):
            ok = head[:1] == b"\x08"  # an ONNX model starts with its ir_version field
        else:
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            ok = 2 <= size <= path.stat().st_size - 8 and f.read(1) == b"{"  # a JSON header of that length
    if not ok:
        raise InvalidInput(
            f"{name} is not a {'ONNX' if name.lower().endswith('.onnx') else 'safetensors'} file (its first bytes "
            "do not match the format); export the model again"
        )
