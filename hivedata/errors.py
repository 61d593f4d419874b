"""hivedata's exception types. Native errors are mapped onto these in one place (csrc/bind_errors.cc)."""

from __future__ import annotations


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
