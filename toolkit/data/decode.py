"""Image bytes of a record -> uint8 RGB CHW, as MXNet's ImageRecordIter, OpenCV and DALI see them.

Every format MXNet's im2rec writes or passes through decodes the same way in training (a region of
the image) and in evaluation (the whole image): EXIF orientation applied, greyscale, palette, CMYK
and alpha made RGB, 16-bit PNG scaled to 8 bits. The reference is OpenCV's `cv2.imdecode(buf,
IMREAD_COLOR)`, which is what MXNet's ImageRecordIter calls. The fast decoders come first
(training: nvImageCodec's libjpeg-turbo region decode for JPEG; evaluation: torchvision.io), and
OpenCV takes what they cannot (BMP, GIF in training, 16-bit PNG, TIFF, WebP, ...).
"""
import os
import struct

import cv2
import numpy as np
import torch
import torchvision.io as tvio

_NVIMGCODEC = {}  # pid -> decoder: one per process, made after the DataLoader forks
_JPEG = b"\xff\xd8"


def decode(payload: bytes) -> torch.Tensor:
    """The whole image, uint8 RGB CHW."""
    if not payload:  # torch.frombuffer's own words for it name neither the file nor the cause
        raise ValueError("an empty file (0 bytes)")
    try:
        img = tvio.decode_image(torch.frombuffer(bytearray(payload), dtype=torch.uint8),
                                mode=tvio.ImageReadMode.RGB, apply_exif_orientation=True)
        if img.dtype == torch.uint8:
            return img[0] if img.ndim == 4 else img  # an animated GIF: its first frame, as OpenCV's
    except RuntimeError:  # a format torchvision does not read (BMP, TIFF, ...)
        pass
    return decode_opencv(payload)


def decode_opencv(payload: bytes) -> torch.Tensor:
    """cv2.imdecode(IMREAD_COLOR), as MXNet's ImageRecordIter: EXIF applied, 16 bits scaled to 8."""
    bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"not an image OpenCV can decode ({len(payload)} bytes, starting {payload[:8]!r})")
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


def _roi_decoder():
    """nvImageCodec's CPU decoder (libjpeg-turbo; installed with DALI), or None without it."""
    pid = os.getpid()
    if pid not in _NVIMGCODEC:
        try:
            from nvidia import nvimgcodec
            _NVIMGCODEC[pid] = (nvimgcodec, nvimgcodec.Decoder(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)]),
                # regions are then in the oriented image's coordinates (tested against OpenCV)
                nvimgcodec.DecodeParams(apply_exif_orientation=True))
        except Exception:  # not installed (no DALI on this platform) or no CPU backend
            _NVIMGCODEC[pid] = None
    return _NVIMGCODEC[pid]


def jpeg_orientation(payload: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, 1 when it has none. Hand-written because nvImageCodec's
    CodeStream gives the stored size but not the orientation, and PIL's parse would cost a good part
    of a region decode; this reads only the marker segments before the image data (a few bytes for
    the JFIF files im2rec writes)."""
    pos, end = 2, len(payload)
    while pos + 4 <= end and payload[pos] == 0xFF:
        marker, length = payload[pos + 1], struct.unpack_from(">H", payload, pos + 2)[0]
        if marker == 0xE1 and payload[pos + 4:pos + 10] == b"Exif\0\0":
            return _tiff_orientation(payload, pos + 10, pos + 2 + length)
        if marker == 0xDA or not 0xC0 <= marker <= 0xFE:  # start of scan: no more headers
            break
        pos += 2 + length
    return 1


def _tiff_orientation(buf: bytes, tiff: int, end: int) -> int:
    try:
        order = {b"II": "<", b"MM": ">"}[buf[tiff:tiff + 2]]
        ifd = tiff + struct.unpack_from(order + "I", buf, tiff + 4)[0]
        for k in range(struct.unpack_from(order + "H", buf, ifd)[0]):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", buf, ifd + 2 + 12 * k)
            if tag == 0x0112 and ifd + 14 + 12 * k <= end:
                value = struct.unpack_from(order + "H", value)[0] if kind == 3 else 1
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def decode_crop(payload: bytes, crop_box) -> torch.Tensor:
    """Decode only the region crop_box(height, width) -> (top, left, h, w) chooses (in the image as
    displayed: EXIF orientation applied): uint8 CHW in channels-last memory. A JPEG with
    nvImageCodec: libjpeg-turbo skips the rows and columns outside the crop (pixels identical to a
    full decode and crop, tested; 0.32 against 0.38 ms for the loader benchmark's crops, 43% of the
    area on average). Anything else: a whole decode (decode()), then the crop."""
    codec = _roi_decoder() if payload[:2] == _JPEG else None
    drawn = None  # (height, width, box): crop_box draws random numbers, so it is asked once
    if codec is not None:
        nvimgcodec, decoder, params = codec
        try:
            stream = nvimgcodec.CodeStream(payload)
            height, width = stream.height, stream.width
            if jpeg_orientation(payload) >= 5:  # turned a quarter: the displayed image is width x height
                height, width = width, height
            drawn = (height, width, crop_box(height, width))
            top, left, h, w = drawn[2]
            img = decoder.decode(stream.get_sub_code_stream(region=nvimgcodec.Region(top, left, top + h, left + w)),
                                 params=params)
            hwc = torch.from_numpy(np.asarray(img.cpu())) if img is not None else None
            if hwc is not None and hwc.shape == (h, w, 3):  # RGB whatever the source (grey, CMYK)
                return hwc.permute(2, 0, 1)
        except Exception:  # nvImageCodec refused the stream: the whole decode below works or says why
            pass
    img = decode(payload)
    height, width = img.shape[-2:]
    top, left, h, w = drawn[2] if drawn and drawn[:2] == (height, width) else crop_box(height, width)
    return img[:, top:top + h, left:left + w].permute(1, 2, 0).contiguous().permute(2, 0, 1)
