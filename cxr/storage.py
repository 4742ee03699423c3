"""Where data lives: local paths and `s3://` URIs behind one pyarrow filesystem interface.

S3 settings come from the standard AWS environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL[_S3]) or, on a
cluster, from the instance role. Every process (the driver and each Ray worker) builds
its filesystem from its own environment, so credentials are never shipped around.
Errors from S3 are translated into one-line `UserError`s that name the URI, never a key.
"""

from __future__ import annotations

import errno
import functools
import heapq
import json
import os
import posixpath
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cxr.errors import UserError


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path that filesystem understands."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts)
        return Location(uri=uri, fs=self.fs, path=path)


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from this process's AWS environment."""
    settings = tuple(os.environ.get(name) for name in _S3_ENVIRONMENT)
    return _s3_filesystem_for(settings)


# Everything that changes which S3 client we get; the cache is keyed on all of it, so a
# changed environment (another endpoint or key) gets a new client.
_S3_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@functools.lru_cache(maxsize=8)
def _s3_filesystem_for(settings: tuple) -> pafs.S3FileSystem:
    # Building a client initialises the AWS SDK; workers read thousands of objects.
    del settings  # the key of the cache; the values are read from the environment below
    options: dict = {}
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def resolve(uri: str) -> Location:
    """Resolve a local path or an s3:// URI."""
    if is_s3_uri(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UserError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        path = (parsed.netloc + parsed.path).rstrip("/")
        return Location(uri=f"s3://{path}", fs=s3_filesystem(), path=path)
    if "://" in uri:
        raise UserError(f"{uri}: unsupported URI scheme (use a local path or s3://bucket/prefix)")
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(uri=path, fs=pafs.LocalFileSystem(), path=path)


def describe_error(exc: BaseException, uri: str) -> str:
    """A one-line explanation of a storage failure, without credentials or a traceback."""
    text = str(exc)
    bucket = urlparse(uri).netloc if is_s3_uri(uri) else ""
    if "NoSuchBucket" in text or "NoSuchBucket" in repr(exc):
        return f"{uri}: bucket '{bucket}' does not exist"
    if any(m in text for m in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED",
                               "AccessDenied", "Forbidden", "403", "INVALID_ACCESS_KEY")):
        return (f"{uri}: access denied by S3 (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                f"or the instance role's permissions)")
    if any(m in text for m in ("curlCode", "Couldn't connect", "Could not connect", "NETWORK_CONNECTION",
                               "Connection refused", "resolve host")):
        endpoint = s3_endpoint() or "the default AWS endpoint"
        return f"{uri}: cannot reach S3 at {endpoint}"
    if isinstance(exc, FileNotFoundError):
        return f"{uri}: does not exist"
    if isinstance(exc, PermissionError):
        return f"{uri}: permission denied"
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{uri}: {first_line}"


def storage_error(exc: BaseException, uri: str) -> UserError:
    return UserError(describe_error(exc, uri))


def file_info(location: Location) -> pafs.FileInfo:
    try:
        return location.fs.get_file_info(location.path)
    except (OSError, ValueError) as exc:
        raise storage_error(exc, location.uri) from None


def is_file(location: Location | str) -> bool:
    """True when a file (an object, on S3) is there; a folder, a prefix or nothing is False."""
    return file_info(_located(location)).type == pafs.FileType.File


def exists(location: Location | str) -> bool:
    """True when a file or a folder (a prefix, on S3) is there."""
    return file_info(_located(location)).type != pafs.FileType.NotFound


def _located(location: Location | str) -> Location:
    return resolve(location) if isinstance(location, str) else location


def check_bucket(location: Location) -> None:
    """Fail early and clearly on a missing bucket or refused credentials."""
    if not location.is_s3:
        return
    bucket = location.path.split("/", 1)[0]
    try:
        info = location.fs.get_file_info(bucket)
    except (OSError, ValueError) as exc:
        raise storage_error(exc, location.uri) from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{location.uri}: bucket '{bucket}' does not exist")


@dataclass(frozen=True)
class Entries:
    """What is below a folder or prefix: its files, its folders, and entries that are neither."""

    files: list[pafs.FileInfo]  # sorted by path; a link to a file is listed at the link's path
    folders: list[str]  # every folder's path, sorted, empty ones too (on S3: the prefixes seen)
    # (path, reason, detail) of each entry that cannot be listed as a file or followed as a
    # folder: a link that loops or dangles, a second link to one folder, a FIFO or a device.
    problems: list[tuple[str, str, str]]


def list_files(location: Location) -> list[pafs.FileInfo]:
    """Every file below a folder or prefix, sorted by path."""
    return list_entries(location).files


def list_entries(location: Location) -> Entries:
    """Every entry below a folder or prefix; nothing at all when there is no such folder.

    A local folder is walked by `_walk_local`, which ends on any tree; pyarrow's recursive
    listing follows folder links without a cycle check, and a link to `..` never ends. S3
    has no links: its listing is pyarrow's.
    """
    if location.is_s3:
        selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
        try:
            infos = location.fs.get_file_info(selector)
        except (OSError, ValueError) as exc:
            raise storage_error(exc, location.uri) from None
        return Entries(files=sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path),
                       folders=sorted(i.path for i in infos if i.type == pafs.FileType.Directory), problems=[])
    try:
        return _walk_local(location.path)
    except OSError as exc:  # the root itself; anything below it is a problem entry
        raise storage_error(exc, location.uri) from None


# Why an entry below a local folder is neither a file nor a folder that was walked.
SYMLINK_LOOP = "symlink_loop"  # a link back to a folder holding it, or a file link whose chain loops
SYMLINK_DUPLICATE = "symlink_duplicate"  # a link to a folder walked already, through another path
BROKEN_LINK = "broken_link"  # a link to nothing
SPECIAL_FILE = "special_file"  # a FIFO, socket or device: reading one could block for ever
UNREADABLE = "unreadable"  # a folder or link this process may not list or follow


def _walk_local(root: str) -> Entries:
    """Walk a local folder, each real folder once (by device and inode), with no recursion.

    Real folders are walked first and folder links only then, in path order, so that a
    link never takes the place of the folder it points to, and the first link to reach a
    folder outside the tree walks it once. A link that leads to a folder holding it would
    start the walk over (`ln -s .. loop`, `ln -s / root`), and is a SYMLINK_LOOP problem,
    told from the real paths before the link is followed; any other link to a folder walked
    already is a SYMLINK_DUPLICATE. Memory is one set entry per folder and one list entry per
    file, whatever the links.
    """
    try:
        top = os.stat(root)
    except FileNotFoundError:
        return Entries(files=[], folders=[], problems=[])
    if not stat.S_ISDIR(top.st_mode):
        return Entries(files=[], folders=[], problems=[])
    files, folders, problems = [], [], []
    visited = {(top.st_dev, top.st_ino)}
    folder_links: list[str] = []  # a heap of paths: each folder link, followed once every real folder is seen
    to_walk = [root]
    while to_walk or folder_links:
        if not to_walk:
            link = heapq.heappop(folder_links)
            target = _follow_folder_link(link, visited, problems)
            if target is None:
                continue
            visited.add(target)
            folders.append(link)
            to_walk.append(link)
        folder = to_walk.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as exc:
            if folder == root:
                raise
            problems.append((folder, UNREADABLE, exc.strerror or type(exc).__name__))
            continue
        for entry in entries:
            try:
                if entry.is_symlink():
                    _classify_link(entry.path, files, problems, folder_links)
                elif entry.is_dir(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    key = (info.st_dev, info.st_ino)
                    if key in visited:  # a bind mount of a folder walked already
                        problems.append((entry.path, SYMLINK_DUPLICATE, "a folder walked already"))
                        continue
                    visited.add(key)
                    folders.append(entry.path)
                    to_walk.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(_file_info(entry.path, entry.stat(follow_symlinks=False)))
                else:
                    problems.append((entry.path, SPECIAL_FILE, "not a regular file or folder"))
            except OSError as exc:
                problems.append((entry.path, UNREADABLE, exc.strerror or type(exc).__name__))
    return Entries(files=sorted(files, key=lambda i: i.path), folders=sorted(folders),
                   problems=sorted(problems))


def _classify_link(path: str, files: list, problems: list, folder_links: list) -> None:
    """A link: a file (listed at the link's path), a folder (walked later), or a problem."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problems.append((path, SYMLINK_LOOP, "the link's chain of links loops"))
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            problems.append((path, BROKEN_LINK, f"links to {os.readlink(path)}, which does not exist"))
        else:
            problems.append((path, UNREADABLE, exc.strerror or type(exc).__name__))
        return
    if stat.S_ISREG(info.st_mode):
        files.append(_file_info(path, info))
    elif stat.S_ISDIR(info.st_mode):
        heapq.heappush(folder_links, path)
    else:
        problems.append((path, SPECIAL_FILE, "links to something that is not a regular file or folder"))


def _follow_folder_link(link: str, visited: set, problems: list) -> tuple[int, int] | None:
    """The (device, inode) of the folder a link leads to, if it is to be walked; else None."""
    try:
        info = os.stat(link)
    except OSError as exc:  # changed since it was classified
        problems.append((link, UNREADABLE, exc.strerror or type(exc).__name__))
        return None
    target, holder = os.path.realpath(link), os.path.realpath(os.path.dirname(link))
    if os.path.commonpath([target, holder]) == target:
        problems.append((link, SYMLINK_LOOP, "links to a folder that holds the link"))
        return None
    if (info.st_dev, info.st_ino) in visited:
        problems.append((link, SYMLINK_DUPLICATE, f"links to {target}, walked already through another path"))
        return None
    return info.st_dev, info.st_ino


def _file_info(path: str, info: os.stat_result) -> pafs.FileInfo:
    return pafs.FileInfo(path, type=pafs.FileType.File, size=info.st_size, mtime_ns=info.st_mtime_ns)


def read_bytes(location: Location) -> bytes:
    with location.fs.open_input_stream(location.path) as stream:
        return stream.read()


def ensure_parent(location: Location) -> None:
    """Create the local folder a file will go in (S3 has no folders to create)."""
    parent = posixpath.dirname(location.path)
    if parent and not location.is_s3:
        location.fs.create_dir(parent, recursive=True)


def write_bytes(location: Location, data: bytes) -> None:
    ensure_parent(location)
    with location.fs.open_output_stream(location.path) as stream:
        stream.write(data)


def write_bytes_atomically(location: Location, data: bytes) -> None:
    """Write a file that no reader ever sees half-written, even if this process dies midway.

    An S3 object of one upload appears whole or not at all; a local file is written under
    a temporary name and renamed into place.
    """
    if location.is_s3:
        write_bytes(location, data)
    else:
        write_stream_atomically(location, [data])


def write_stream_atomically(location: Location, chunks: Iterable[bytes]) -> int:
    """Write a stream under a temporary name, then move it into place; the bytes written.

    On S3 too: a multipart upload that fails midway would otherwise be completed, partial,
    when its stream is closed.
    """
    suffix = PARTIAL_MARK + uuid.uuid4().hex[:8]
    partial_path = location.path + suffix
    ensure_parent(location)
    written = 0
    try:
        with location.fs.open_output_stream(partial_path) as stream:
            for chunk in chunks:
                stream.write(chunk)
                written += len(chunk)
        location.fs.move(partial_path, location.path)
    except BaseException:
        try:
            location.fs.delete_file(partial_path)
        except OSError:
            pass
        raise
    return written


# In the name of a file being written by write_stream_atomically; readers skip such files.
PARTIAL_MARK = ".partial-"


def write_json(location: Location, payload: dict) -> None:
    write_bytes(location, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(location: Location) -> dict:
    return json.loads(read_bytes(location).decode())


def check_writable(location: Location) -> None:
    """Write and delete a probe object, so that a read-only target fails before any work."""
    probe = location.join("_cxr_write_probe")
    try:
        write_bytes(probe, b"probe")
        location.fs.delete_file(probe.path)
    except (OSError, ValueError) as exc:
        raise storage_error(exc, location.uri) from None


def delete_tree(location: Location) -> None:
    """Delete a folder or prefix and everything below it (delete_contents keeps the folder)."""
    try:
        if exists(location):
            location.fs.delete_dir(location.path)
    except (OSError, ValueError) as exc:
        raise storage_error(exc, location.uri) from None


def delete_contents(location: Location, keep: tuple[str, ...] = ()) -> None:
    """Delete everything in a folder or prefix but its top-level entries named in `keep`
    (the claim of the job that deletes: cxr.claims)."""
    selector = pafs.FileSelector(location.path, recursive=False, allow_not_found=True)
    try:
        for info in location.fs.get_file_info(selector):
            if posixpath.basename(info.path) in keep:
                continue
            if info.type == pafs.FileType.Directory:
                location.fs.delete_dir(info.path)
            else:
                location.fs.delete_file(info.path)
    except (OSError, ValueError) as exc:
        raise storage_error(exc, location.uri) from None


def contains(outer: str, inner: str) -> bool:
    """Whether `inner` is `outer` or lies below it (two URIs; local paths through their links)."""
    def normal(uri: str) -> str:
        return uri.rstrip("/") if is_s3_uri(uri) else os.path.realpath(os.path.expanduser(uri))

    outer, inner = normal(outer), normal(inner)
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")
