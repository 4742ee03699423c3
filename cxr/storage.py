"""Where data lives: local paths and URIs of any filesystem pyarrow knows, behind one interface.

- A local path (or a `file://` URI) is pyarrow's LocalFileSystem, with an absolute path.
- `s3://bucket/prefix` is an S3FileSystem built from the standard AWS environment
  (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
  AWS_ENDPOINT_URL[_S3]) or, on a cluster, the instance role. Not through
  `FileSystem.from_uri`: it would ignore AWS_ENDPOINT_URL, and with it every S3-compatible server.
- Any other scheme goes to `pyarrow.fs.FileSystem.from_uri`: `gs://` (GCS), `hdfs://` and
  `viewfs://`, `abfs://`/`abfss://` (Azure), `fsspec+<protocol>://` (any fsspec filesystem
  that is installed), `hf://`. Each takes its credentials from the environment as its
  library does (GOOGLE_APPLICATION_CREDENTIALS, Hadoop's configuration, Azure's identity...).

Every process (the driver and each Ray worker) builds its filesystem from its own
environment, so credentials are never shipped around. A URI is written as the keys are
(spaces as spaces, not percent-encoded, as for s3://) and carries no options or
credentials: everything after the authority is the path, and a URI with a password is
refused, since URIs are printed and recorded in manifests. Errors are translated into
one-line `UserError`s that name the URI, never a key.
"""

from __future__ import annotations

import difflib
import errno
import functools
import heapq
import json
import os
import posixpath
import re
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlparse

import pyarrow
import pyarrow.fs as pafs

from cxr.errors import UserError

# Filesystems (pyarrow's type names) whose folders are only prefixes of object keys: a
# folder need not be made before a file is written in it (making one leaves a marker
# object), and an object appears whole or not at all when its upload ends.
OBJECT_STORES = ("s3", "gcs", "abfs")

# The schemes that work with this pyarrow, for the message that refuses another one;
# whatever pyarrow's from_uri accepts works, listed here or not.
KNOWN_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file", "hf")


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path that filesystem understands.

    `uri` is what the user wrote (normalized: no trailing slash; a local path made
    absolute) and what messages and records name; `path` is the same place in the
    filesystem's own form (`bucket/key` on S3 and GCS, `/key` on HDFS, `container/key` on Azure).
    """

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def is_object_store(self) -> bool:
        """S3, GCS or Azure: folders are key prefixes, and an object appears whole or not at all."""
        return self.fs.type_name in OBJECT_STORES

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts)
        return Location(uri=uri, fs=self.fs, path=path)

    def at_path(self, path: str) -> Location:
        """The location of a path of this filesystem at or below this one (a listed file's, say)."""
        relative = posixpath.relpath(path, self.path)
        if relative == ".":
            return self
        if relative.startswith("../"):
            raise ValueError(f"{path} is not below {self.path}")
        return self.join(relative)


def scheme_of(uri: str) -> str:
    """A URI's scheme, lower case (`s3`, `gs`, `fsspec+memory`); '' for a local path."""
    if "://" not in uri:
        return ""
    scheme = uri.split("://", 1)[0]
    return scheme.lower() if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else ""


def is_s3_uri(uri: str) -> bool:
    return scheme_of(uri) == "s3"


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
    """Resolve a local path or a URI of any filesystem pyarrow knows (see the module's docstring)."""
    scheme = scheme_of(uri)
    if not scheme:
        if "://" in uri:
            raise UserError(f"{uri}: not a valid URI (a scheme is letters, digits, '+', '-' or '.', "
                            f"as in s3://bucket/prefix)")
        path = os.path.abspath(os.path.expanduser(uri))
        return Location(uri=path, fs=pafs.LocalFileSystem(), path=path)
    authority, _, key = uri.split("://", 1)[1].partition("/")
    if ":" in authority.rpartition("@")[0]:
        # Named without the password: this message is printed too.
        shown = f"{scheme}://***@{authority.rpartition('@')[2]}/{key}"
        raise UserError(f"{shown}: a URI must not hold a password or key (URIs are printed and recorded "
                        f"in manifests): give credentials through this machine's environment")
    key = key.rstrip("/")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise UserError(f"{uri}: a file:// URI names a local path, as in file:///data/xrays")
        return resolve("/" + key)
    if scheme == "s3":
        if not authority:
            raise UserError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        path = f"{authority}/{key}".rstrip("/")
        return Location(uri=f"s3://{path}", fs=s3_filesystem(), path=path)
    fs, path = _from_uri(uri, scheme, authority, key)
    normal = f"{scheme}://{authority}/{key}".rstrip("/") if key else f"{scheme}://{authority}"
    return Location(uri=normal, fs=fs, path=path.rstrip("/") or path)


def _from_uri(uri: str, scheme: str, authority: str, key: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a URI (one filesystem per scheme and authority)."""
    # pyarrow's native schemes parse a strict URI (percent-encoded); fsspec's take the key as is.
    through_fsspec = scheme.startswith("fsspec+") or scheme == "hf"
    strict = f"{scheme}://{authority}/{key if through_fsspec else quote(key, safe='/')}"
    try:
        fs, path = pafs.FileSystem.from_uri(strict)
    except (OSError, ImportError, ValueError) as exc:
        # ArrowInvalid (a ValueError) for a scheme pyarrow does not know, fsspec's ValueError for
        # a protocol it does not know; else a library the scheme needs is missing (libhdfs, gcsfs).
        if any(m in str(exc) for m in ("Unrecognized filesystem type", "Protocol not known")):
            raise UserError(_unknown_scheme_message(uri, scheme)) from None
        raise UserError(f"{uri}: {scheme}:// storage cannot be opened on this machine "
                        f"({_without_secrets(_first_line(exc))})") from None
    # One filesystem per scheme and authority, kept: each GCS or Azure filesystem is a client with
    # its own connections, and workers resolve one URI per image they read.
    return _FILESYSTEMS.setdefault(f"{scheme}://{authority}", fs), path


_FILESYSTEMS: dict[str, pafs.FileSystem] = {}


def _unknown_scheme_message(uri: str, scheme: str) -> str:
    guess = difflib.get_close_matches(scheme, KNOWN_SCHEMES, n=1, cutoff=0.5)
    hint = f"did you mean {guess[0]}://? " if guess else ""
    return (f"{uri}: unknown storage scheme {scheme}:// ({hint}this pyarrow {pyarrow.__version__} reads a local "
            f"path or {', '.join(s + '://' for s in KNOWN_SCHEMES)} and fsspec+<protocol>://)")


def describe_error(exc: BaseException, uri: str) -> str:
    """A one-line explanation of a storage failure, without credentials or a traceback."""
    return _without_secrets(_described(exc, uri))


def _described(exc: BaseException, uri: str) -> str:
    text = str(exc)
    scheme = scheme_of(uri)
    if scheme == "s3" and ("NoSuchBucket" in text or "NoSuchBucket" in repr(exc)):
        return f"{uri}: bucket '{urlparse(uri).netloc}' does not exist"
    # Only for a store: a local file may be named "403.png".
    if scheme and any(m in text for m in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED",
                                          "AccessDenied", "Forbidden", "403", "INVALID_ACCESS_KEY",
                                          "PERMISSION_DENIED", "UNAUTHENTICATED", "AuthenticationFailed",
                                          "AuthorizationFailure", "AccessControlException")):
        if scheme == "s3":
            return (f"{uri}: access denied by S3 (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                    f"or the instance role's permissions)")
        return f"{uri}: access denied by the {scheme}:// store (check the credentials this machine has for it)"
    if scheme and any(m in text for m in ("curlCode", "Couldn't connect", "Could not connect", "NETWORK_CONNECTION",
                                          "Connection refused", "resolve host", "UNAVAILABLE")):
        if scheme == "s3":
            return f"{uri}: cannot reach S3 at {s3_endpoint() or 'the default AWS endpoint'}"
        return f"{uri}: cannot reach the {scheme}:// store"
    if isinstance(exc, FileNotFoundError):
        return f"{uri}: does not exist"
    if isinstance(exc, PermissionError):
        return f"{uri}: permission denied"
    return f"{uri}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Environment variables that hold secrets, by name: their values never appear in a message,
# whatever a storage library put in its error (a signed URL, a request's headers...).
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|ACCOUNT_KEY|CLIENT_KEY|CREDENTIAL")


def _without_secrets(text: str) -> str:
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name.upper()) and value in text:
            text = text.replace(value, "***")
    return text


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
    folders: list[str]  # every folder's path, sorted, empty ones too (on object stores: the prefixes seen)
    # (path, reason, detail) of each entry that cannot be listed as a file or followed as a
    # folder: a link that loops or dangles, a second link to one folder, a FIFO or a device.
    problems: list[tuple[str, str, str]]


def list_files(location: Location) -> list[pafs.FileInfo]:
    """Every file below a folder or prefix, sorted by path."""
    return list_entries(location).files


def list_entries(location: Location) -> Entries:
    """Every entry below a folder or prefix; nothing at all when there is no such folder.

    A local folder is walked by `_walk_local`, which ends on any tree; pyarrow's recursive
    listing follows folder links without a cycle check, and a link to `..` never ends. Other
    filesystems (S3, GCS, HDFS...) are listed by pyarrow: their listings hold no links.
    """
    if not location.is_local:
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
    """Create the folder a file will go in (an object store has no folders to create)."""
    parent = posixpath.dirname(location.path)
    if parent and not location.is_object_store:
        location.fs.create_dir(parent, recursive=True)


def write_bytes(location: Location, data: bytes) -> None:
    ensure_parent(location)
    with location.fs.open_output_stream(location.path) as stream:
        stream.write(data)


def write_bytes_atomically(location: Location, data: bytes) -> None:
    """Write a file that no reader ever sees half-written, even if this process dies midway.

    An object of one upload (S3, GCS, Azure) appears whole or not at all; a file elsewhere
    is written under a temporary name and renamed into place.
    """
    if location.is_object_store:
        write_bytes(location, data)
    else:
        write_stream_atomically(location, [data])


def write_stream_atomically(location: Location, chunks: Iterable[bytes]) -> int:
    """Write a stream under a temporary name, then move it into place; the bytes written.

    On object stores too: a multipart upload that fails midway would otherwise be completed,
    partial, when its stream is closed.
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
        if scheme_of(uri) == "file":
            uri = "/" + uri.split("://", 1)[1].partition("/")[2]
        return uri.rstrip("/") if scheme_of(uri) else os.path.realpath(os.path.expanduser(uri))

    outer, inner = normal(outer), normal(inner)
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")
