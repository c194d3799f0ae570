"""The errors of the upload workflow: :class:`UploadError` and its subclasses, each with a stable ``code``."""

from __future__ import annotations

from core.errors import SluiceError


class UploadError(SluiceError):
    """An upload request that cannot be carried out; ``code`` is a stable, machine-readable reason.

    The tree (``core/errors.py`` is another module's; these live here)::

        UploadError
        ├── UploadNotFoundError        no such upload for this tenant
        ├── UploadStateError           the upload is not in a status that allows the request
        ├── CompletionInProgressError  another completion of the upload holds its lock
        ├── MissingPartsError          parts are missing or have the wrong size
        ├── PartIntegrityError         S3 stored a part whose ETag is not the MD5 of the bytes sent
        └── WrongTransferError         a proxied part for a direct upload, or a part URL for a proxied one
    """

    code = "upload_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UploadNotFoundError(UploadError):
    """No upload with this id belongs to the caller (another tenant's upload is not found either)."""

    code = "upload_not_found"


class UploadStateError(UploadError):
    """The upload's status forbids the request. Attributes: status: the upload's status."""

    code = "not_pending"

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(detail or f"the upload is {status}")
        self.status = status


class CompletionInProgressError(UploadError):
    """Another request or job is completing this upload right now."""

    code = "completion_in_progress"


class MissingPartsError(UploadError):
    """Completion needs every part, each of its expected size.

    Attributes:
        missing: part numbers never received. wrong_size: part numbers received with another size.
    """

    code = "missing_parts"

    def __init__(self, missing: list[int], wrong_size: list[int]) -> None:
        detail = f"{len(missing)} part(s) missing" + (f", {len(wrong_size)} of a wrong size" if wrong_size else "")
        super().__init__(detail)
        self.missing = missing
        self.wrong_size = wrong_size


class PartIntegrityError(UploadError):
    """S3 answered a part with an ETag that is not the MD5 of the bytes sent; the part was not recorded."""

    code = "etag_mismatch"


class UploadTooLargeError(UploadError):
    """The declared size is above ``settings.max_upload_bytes``."""

    code = "too_large"



class WrongTransferError(UploadError):
    """The request belongs to the other transfer: a part sent through Sluice for a ``direct`` upload (whose parts
    go to the presigned URLs), or a part URL asked for a ``proxy`` upload."""

    code = "wrong_transfer"
