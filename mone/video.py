"""Video in and out for the explorer: decode and sample frames (PyAV), encode H.264 MP4 that browsers play (PyAV).

OpenCV's PyPI wheels cannot write H.264 and Chromium refuses mp4v, so output goes through PyAV's bundled FFmpeg:
libx264, yuv420p, even width and height, `+faststart` (the index first, so playback starts before the download ends).

Every failure of a user's file becomes a `VideoReadError` whose message is meant for the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["VideoReadError", "VideoInfo", "SampledVideo", "probe", "sample_frames", "encode_h264", "read_frames",
           "MAX_VIDEO_SECONDS", "MAX_VIDEO_PIXELS", "MAX_FRAMES"]

MAX_VIDEO_SECONDS = 300.0           # longer videos are refused (the sampler would skip almost everything)
MAX_VIDEO_PIXELS = 3840 * 2160      # 4K UHD per frame
MAX_FRAMES = 48                     # frames sampled per video by default


class VideoReadError(ValueError):
    """An upload that is not a usable video; the message is meant for the user."""


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float | None          # seconds, None when the container does not say
    frames: int                     # video packets (= frames for the codecs in use), counted by demuxing
    codec: str


@dataclass
class SampledVideo:
    frames: list[np.ndarray]        # RGB uint8 (H, W, 3)
    times: list[float]              # presentation time of each frame, seconds
    indices: list[int]              # index of each frame among all decoded frames
    info: VideoInfo
    notes: list[str] = field(default_factory=list)


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"File not found: {path.name}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"The file {path.name} is empty (0 bytes).")
    try:
        container = av.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001  (av.error.* and OSError for garbage input)
        raise VideoReadError(f"{path.name} is not a readable video file ({_short(err)}).") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path.name} has no video stream (no frames to analyze).")
    return container


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def probe(path: str | Path, max_seconds: float = MAX_VIDEO_SECONDS,
          max_pixels: int = MAX_VIDEO_PIXELS) -> VideoInfo:
    """Size, rate, duration and frame count from the container (demuxing only, nothing decoded).

    Raises VideoReadError for a file that is not a video, has no video stream or no frames, uses a codec this FFmpeg
    cannot decode, is longer than `max_seconds` or has frames larger than `max_pixels`.
    """
    name = Path(path).name
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:                                    # FFmpeg has no decoder for this stream's codec
            tag = str(getattr(stream, "codec_tag", "") or "").strip() or "unknown"
            raise VideoReadError(f"{name} uses a video codec that cannot be decoded here (codec tag '{tag}'). "
                                 "Convert it to H.264 MP4 or WebM first.")
        codec = getattr(getattr(ctx, "codec", None), "name", None) or getattr(ctx, "name", None) or "unknown"
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        if duration is not None and duration > max_seconds:
            raise VideoReadError(f"{name} is {duration:.0f} s long; the limit is {max_seconds:.0f} s. "
                                 "Trim it to a shorter clip first.")
        if width * height > max_pixels:
            raise VideoReadError(f"{name} is {width}x{height}; the limit is {max_pixels / 1e6:.1f} megapixels "
                                 "per frame (4K). Downscale it first.")
        frames, last = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    frames += 1
                    if packet.pts is not None:
                        last = packet.pts if last is None else max(last, packet.pts)
        except Exception as err:  # noqa: BLE001
            if not frames:
                raise VideoReadError(f"{name} cannot be read ({_short(err)}).") from None
        if frames == 0:
            raise VideoReadError(f"{name} contains no video frames.")
        if duration is None and last is not None and stream.time_base is not None:
            duration = float(last * stream.time_base) + 1.0 / fps
        if duration is None:
            duration = frames / fps
        if duration > max_seconds:
            raise VideoReadError(f"{name} is {duration:.0f} s long; the limit is {max_seconds:.0f} s. "
                                 "Trim it to a shorter clip first.")
    return VideoInfo(width, height, fps, duration, frames, codec)


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(2, int(round(width * s))), max(2, int(round(height * s)))


def sample_frames(path: str | Path, max_frames: int = MAX_FRAMES, max_side: int | None = 640,
                  max_seconds: float = MAX_VIDEO_SECONDS, max_pixels: int = MAX_VIDEO_PIXELS) -> SampledVideo:
    """Up to `max_frames` frames spread evenly over the video (all of them if it has fewer), RGB uint8, scaled so
    that the long side is at most `max_side`. A note says when frames were skipped."""
    import av

    if int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    info = probe(path, max_seconds, max_pixels)
    name = Path(path).name
    total = info.frames
    wanted = np.unique(np.round(np.linspace(0, total - 1, min(int(max_frames), total))).astype(int)).tolist()
    want = set(wanted)
    frames, times, indices, notes = [], [], [], []
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index in want:
                    w, h = _scaled_size(frame.width, frame.height, max_side)
                    frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                    times.append(float(frame.time) if frame.time is not None else index / info.fps)
                    indices.append(index)
                if index >= wanted[-1]:
                    break
        except Exception as err:  # noqa: BLE001  (corrupt data or an unsupported codec)
            if not frames:
                raise VideoReadError(f"{name} cannot be decoded: codec '{info.codec}' is unreadable or the data is "
                                     f"corrupt ({_short(err)}).") from None
            notes.append(f"decoding stopped early at frame {index + 1} ({_short(err)})")
    if not frames:
        raise VideoReadError(f"{name} has no decodable frames (codec '{info.codec}').")
    if total > len(wanted):
        notes.insert(0, f"the video has {total} frames ({info.duration:.1f} s); {len(frames)} were sampled evenly "
                        f"(about 1 in {total / len(wanted):.1f}; the cap is {max_frames} frames)")
    return SampledVideo(frames, times, indices, info, notes)


def read_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame as RGB uint8 (for tests and small clips)."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def encode_h264(frames: Iterable[np.ndarray] | Sequence[np.ndarray], path: str | Path, fps: float = 12.0,
                crf: int = 23, preset: str = "veryfast") -> Path:
    """Write RGB uint8 frames (all the same size) as H.264 yuv420p MP4 with +faststart. Odd sizes are padded by one
    pixel (edge copy) to even, as yuv420p requires."""
    import av

    path = Path(path)
    rate = Fraction(float(fps)).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
    stream, size, count = None, None, 0
    try:
        for rgb in frames:
            rgb = np.asarray(rgb)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"frames must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
            h, w = rgb.shape[:2]
            if h % 2 or w % 2:
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if stream is None:
                size = rgb.shape[:2]
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = size[1], size[0]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            elif rgb.shape[:2] != size:
                raise ValueError(f"all frames must have the same size: {rgb.shape[:2]} != {size}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
        if count == 0:
            path.unlink(missing_ok=True)
    return path
