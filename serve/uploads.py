"""Turning an HTTP request into decoded images and video frames, or into a 4xx error with a sentence.

Nothing here ever reads a file named by the request: media arrive as bytes (a raw body with an image or
video content type, or multipart `file` / `files` fields) and are size-checked before and while reading;
an image against `max_body_bytes` and `max_pixels`, a video against `max_video_bytes`, its frame size
and `max_video_seconds`.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request

from deepfake_platform.data import BadImageError, load_image
from deepfake_platform.data.video import (
    BadVideoError,
    SampledVideo,
    VideoTooLargeError,
    is_video_name,
    sample_video_from_bytes,
)
from serve.errors import APIError
from serve.settings import AppArgs

# Raw bodies: any image/* or video/* type, or bytes with no declared type.
RAW_BODY_TYPES = ("image/", "video/", "application/octet-stream")
FILE_FIELDS = ("file", "files")


class TooManyFiles(MultiPartException):
    """A multipart body with more file parts than the request may carry (413, where other parse errors are 400)."""


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, raising `TooManyFiles` for one file too many."""

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException as err:
            # Starlette counts the file parts in `_current_files` and raises its generic exception past max_files.
            if self._current_files > self.max_files:
                raise TooManyFiles(err.message) from err
            raise


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name (None for a raw body), declared content type, and bytes."""

    name: str | None
    content_type: str
    data: bytes

    @property
    def is_video(self) -> bool:
        """A video by its declared type, its file name, or its first bytes (MP4/MOV, WebM/MKV, AVI)."""
        head = self.data[:16]
        magic = head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        named = bool(self.name) and is_video_name(self.name)
        return self.content_type.startswith("video/") or named or magic


def content_type(request: Request) -> str:
    """The media type of the request body, lower-case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 when Content-Length or the bytes actually sent exceed max_bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise APIError(400, f"the Content-Length header {declared!r} is not a number.")
        if int(declared) > max_bytes:
            raise APIError(413, _too_large(int(declared), max_bytes))
    chunks, size = [], 0
    # Counted while reading: a client may send more than it declared, or no Content-Length at all.
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, _too_large(size, max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> str:
    return (f"the request body is over the limit of {max_bytes:,} bytes (got at least {size:,}); "
            "send a smaller or recompressed image.")


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def read_uploads(request: Request, settings: AppArgs) -> list[Upload]:
    """Each uploaded file: the multipart `file`/`files` fields, or the raw body (no name)."""
    media_type = content_type(request)
    if media_type == "multipart/form-data":
        body = await read_body(request, settings.max_request_bytes)
        if not body:
            raise APIError(400, "the request body is empty: attach the image as the multipart field `file`.")
        parser = LimitedMultiPartParser(request.headers, _once(body), max_files=settings.max_batch_files)
        try:
            form = await parser.parse()
        except TooManyFiles as err:
            raise APIError(413, f"the multipart body could not be read: {err.message}") from err
        except MultiPartException as err:
            raise APIError(400, f"the multipart body could not be read: {err.message}") from err
        uploads = [item for field in FILE_FIELDS for item in form.getlist(field)]
        if not uploads:
            raise APIError(400, "no image in the form: attach it as the multipart field `file`.")
        if not all(isinstance(item, UploadFile) for item in uploads):
            raise APIError(400, "the `file` field must be a file upload, not text.")
        files = [Upload(item.filename or f"upload {i + 1}", (item.content_type or "").lower(), await item.read())
                 for i, item in enumerate(uploads)]
        await form.close()
        return [check_size(upload, settings) for upload in files]
    if media_type.startswith(RAW_BODY_TYPES):
        body = await read_body(request, settings.max_request_bytes)
        if not body:
            raise APIError(400, "the request body is empty: send the image bytes as the body.")
        return [check_size(Upload(None, media_type, body), settings)]
    shown = media_type or "none"
    raise APIError(
        415,
        f"unsupported content type {shown}: send the image or video as the raw body with its content type "
        "(e.g. image/jpeg, video/mp4) or as the multipart/form-data field `file`.",
    )


async def read_form(request: Request, settings: AppArgs) -> dict[str, Any]:
    """The fields of a form (multipart, or URL-encoded without a file): text fields as strings, a `file`
    field as an Upload (size-checked)."""
    media_type = content_type(request)
    if media_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise APIError(415, "send the fields as multipart/form-data (request_id, label, and file when asked for).")
    body = await read_body(request, settings.max_request_bytes)
    parser = (MultiPartParser(request.headers, _once(body), max_files=1) if media_type == "multipart/form-data"
              else FormParser(request.headers, _once(body)))
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise APIError(400, f"the multipart body could not be read: {err.message}") from err
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            fields[key] = check_size(Upload(value.filename, (value.content_type or "").lower(), await value.read()),
                                     settings)
        else:
            fields[key] = value
    await form.close()
    return fields


def check_size(upload: Upload, settings: AppArgs) -> Upload:
    """`upload`, or a 413 when it is over the limit of its kind (images and videos have their own)."""
    limit = settings.max_video_bytes if upload.is_video else settings.max_body_bytes
    if len(upload.data) > limit:
        what = "video" if upload.is_video else "image"
        raise APIError(413, f"{upload.name or 'the uploaded ' + what} is {len(upload.data):,} bytes, over the {what} "
                            f"limit of {limit:,} bytes; send a smaller or recompressed {what}.")
    return upload


def _pixel_count(data: bytes) -> float:
    """Width x height from the image header alone, 0 when the header cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size[0] * image.size[1]
    except Image.DecompressionBombError:
        return float("inf")
    except Exception:  # any unreadable header means "not too large": the 400 path reports it
        return 0


def decode_video(upload: Upload, settings: AppArgs, *, num_frames: int, every: int) -> SampledVideo:
    """The frames of an uploaded video the model scores (`num_frames` evenly spaced, or every `every`-th) and its
    frame rate: 413 when too long or too large per frame, 400 when undecodable."""
    name = upload.name or "the uploaded video"
    suffix = Path(upload.name).suffix.lower() if upload.name and is_video_name(upload.name) else ".mp4"
    try:
        return sample_video_from_bytes(upload.data, suffix, num_frames=num_frames, every=every,
                                       max_pixels=settings.max_pixels, max_duration_s=settings.max_video_seconds)
    except BadVideoError as err:
        raise APIError(413 if isinstance(err, VideoTooLargeError) else 400, f"{name} {err.reason}") from err


def decode_image(filename: str | None, data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into RGB: 413 over the pixel limit, 400 when empty, truncated or not an image."""
    name = filename or "the uploaded image"
    if not data:
        raise APIError(400, f"{name} is empty: upload the image's bytes.")
    try:
        return load_image(data, max_pixels=max_pixels)
    except BadImageError as err:
        if _pixel_count(data) > max_pixels:
            raise APIError(413, f"{name} has more than {max_pixels:,} pixels; downscale it and retry.") from err
        # Pillow's own message names in-memory objects; the client needs what to do instead.
        raise APIError(400, f"{name} could not be decoded: it is truncated, corrupt, or not an image "
                            "(send JPEG, PNG, WebP, BMP, GIF or TIFF).") from err
