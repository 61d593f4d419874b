"""hivedata's exception types. Native errors are mapped onto these in one place (csrc/bind_errors.cc)."""

from __future__ import annotations

from collections.abc import Sequence


class HivedataError(Exception):
    """Base class of every error hivedata raises on purpose."""


class ObjectError(HivedataError):
    """An error about one object; `bucket`, `object` and `status` (HTTP, or None) say which and why."""

    def __init__(self, message: str, *, bucket: str | None = None, object: str | None = None,  # noqa: A002
                 status: int | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.object = object
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep keyword attributes across pickling (multiprocessing)
        return (_rebuild, (type(self), str(self), self.bucket, self.object, self.status))


def _rebuild(cls: type, message: str, bucket: str | None, obj: str | None, status: int | None) -> ObjectError:
    return cls(message, bucket=bucket, object=obj, status=status)


class FetchError(ObjectError):
    """A read failed: an HTTP status other than those below, a network failure, or retries exhausted."""


class ObjectNotFoundError(FetchError, FileNotFoundError):
    """HTTP 404: the object (or bucket) does not exist."""


class ObjectPermissionError(FetchError, PermissionError):
    """HTTP 401/403: the credentials may not read the object."""


class RangeError(FetchError, ValueError):
    """A byte range that is invalid or lies outside the object."""


class ChecksumError(FetchError):
    """The bytes received do not match the object's crc32c, even after retries."""


class BufferTooSmallError(FetchError, ValueError):
    """The object is larger than the buffer it was to be read into."""


class TlsError(FetchError):
    """The server's TLS certificate could not be verified with the CA bundle in use (never retried)."""


class FetchCancelledError(FetchError):
    """The request was cancelled before it finished."""


class BadRequestError(FetchError, ValueError):
    """The request cannot be sent (an empty bucket or object name)."""


class BadImageError(ObjectError):
    """An image that cannot be decoded; `object` names it when known."""


class NotJpegError(BadImageError):
    """The bytes are not a JPEG (another format, random bytes, or empty)."""


class CorruptImageError(BadImageError):
    """A damaged or truncated JPEG."""


class ImageTooLargeError(BadImageError):
    """More pixels than the decompression-bomb limit allows."""


class UnsupportedImageError(BadImageError):
    """A JPEG layout or colour space hivedata does not convert."""


class IndexStaleError(HivedataError):
    """A cached index no longer matches the bucket."""


class DataLocationError(HivedataError):
    """Data that is not where, or not what, it was said to be: `url` names it; `part` is "prefix" or "labels"."""

    def __init__(self, message: str, *, url: str | None = None, part: str = "prefix") -> None:
        super().__init__(message)
        self.url = url
        self.part = part


class NoImagesError(DataLocationError, FileNotFoundError):
    """Nothing that is an image is listed under a prefix (a misspelt or empty one)."""

    @classmethod
    def under(cls, bucket: str, prefix: str, names: Sequence[str]) -> NoImagesError:
        """The error for gs://bucket/prefix, whose listing held only `names` (no class folders, no images)."""
        url = f"gs://{bucket}/{prefix}"
        if not names:
            why = "nothing is listed there: check the spelling" if prefix else "the bucket is empty"
        else:
            why = f"{len(names)} objects, none a .jpeg/.jpg/.png, e.g. {names[0].rsplit('/', 1)[-1]!r}"
            if any(n.endswith(".tar") for n in names):
                why += f"; for WebDataset shards pass {url}*.tar"
            elif any(n.endswith(".index.npz") for n in names):
                why += "; for packed shards pass the .index.npz object itself"
        return cls(f"no images under {url} ({why})", url=url, part="prefix")


class DataFormatError(DataLocationError, ValueError):
    """Data that is there but is not what was said: a folder that is not a training class, not a shard index."""


class LabelsError(DataLocationError, ValueError):
    """A labels file that is missing, unreadable or malformed, or that does not label every image."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message, url=url, part="labels")
