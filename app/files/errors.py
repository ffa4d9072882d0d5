"""Errors of files and attachments."""

from __future__ import annotations

from typing import ClassVar

from app.core.errors import AppError, InvalidRequest, NotFound, PayloadTooLarge, ServiceUnavailable


class FileNotFound(NotFound):
    default_message = "File not found."


class UnsupportedMediaType(AppError):
    status_code: ClassVar[int] = 415
    type: ClassVar[str] = "unsupported_media_type"
    default_message: ClassVar[str] = (
        "Unsupported file type: PNG, JPEG, GIF, WebP, PDF and UTF-8 text (plain, Markdown, CSV) are accepted."
    )


class FileTooLarge(PayloadTooLarge):
    default_message = "The file is too large."


class QuotaExceeded(PayloadTooLarge):
    type, default_message = "quota_exceeded", "This key's file storage is full (FILE_STORAGE_QUOTA_BYTES)."


class ImageTooLarge(InvalidRequest):
    type, default_message = "image_too_large", "The image's dimensions are beyond what models take."


class TooManyPages(InvalidRequest):
    type, default_message = "too_many_pages", "The PDF has more pages than models take."


class AttachmentsUnsupported(InvalidRequest):
    type, default_message = "attachments_unsupported", "This agent's model takes no images or documents."


class TooManyAttachments(InvalidRequest):
    type, default_message = "too_many_attachments", "Too many attachments (CHAT_MAX_ATTACHMENTS)."


class RemoteFileRefused(InvalidRequest):
    type, default_message = "remote_file_refused", "The file at that URL could not be fetched."


class StorageUnavailable(ServiceUnavailable):
    type, default_message = "storage_unavailable", "File storage is temporarily unavailable."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "2"})
