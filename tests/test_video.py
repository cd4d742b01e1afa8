"""Video in/out: sampling with a cap, H.264 output that browsers play, clear errors for unusable files."""
import re
from pathlib import Path

import av
import numpy as np
import pytest

from mone import video as mv


def make_clip(path, frames=30, width=64, height=48, fps=10.0):
    """A clip of a white square moving over a dark gradient (frame i: square at x = 2 i)."""
    out = []
    for i in range(frames):
        f = np.zeros((height, width, 3), np.uint8)
        f[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)[None, :]
        x = (2 * i) % max(1, width - 12)
        f[10:22, x:x + 12] = 255
        out.append(f)
    return mv.encode_h264(out, path, fps), out


def test_encode_h264_is_browser_playable(tmp_path):
    path, frames = make_clip(tmp_path / "clip.mp4", frames=20, fps=10)
    info = mv.probe(path)
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 64, 48, 20)
    assert info.duration == pytest.approx(2.0, abs=0.15) and info.fps == pytest.approx(10.0)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert c.format.name.startswith("mov,mp4")
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and head.find(b"moov") < max(head.find(b"mdat"), 4096)   # +faststart
    decoded = mv.read_frames(path)
    assert len(decoded) == 20
    assert np.abs(decoded[5].astype(int) - frames[5].astype(int)).mean() < 6            # lossy but faithful


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = [np.full((37, 51, 3), 100, np.uint8)] * 3
    info = mv.probe(mv.encode_h264(frames, tmp_path / "odd.mp4", 5))
    assert (info.width, info.height) == (52, 38)


def test_encode_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="same size"):
        mv.encode_h264([np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="no frames"):
        mv.encode_h264([], tmp_path / "b.mp4")
    assert not (tmp_path / "b.mp4").exists()


def test_sample_frames_caps_and_spreads_evenly(tmp_path):
    path, _ = make_clip(tmp_path / "clip.mp4", frames=40, fps=20)
    s = mv.sample_frames(path, max_frames=10)
    assert len(s.frames) == 10 and s.indices[0] == 0 and s.indices[-1] == 39
    assert np.all(np.diff(s.indices) >= 4) and np.all(np.diff(s.times) > 0)
    assert "40 frames" in s.notes[0] and "10 were sampled" in s.notes[0]
    x0 = np.argmax(s.frames[1][15].sum(-1) > 600)                # the square has moved by frame index
    assert x0 == pytest.approx(2 * s.indices[1], abs=2)
    full = mv.sample_frames(path, max_frames=48)
    assert len(full.frames) == 40 and not full.notes              # short video: every frame, no note


def test_sample_frames_downscales_to_max_side(tmp_path):
    path, _ = make_clip(tmp_path / "wide.mp4", frames=4, width=320, height=96)
    s = mv.sample_frames(path, max_frames=4, max_side=160)
    assert s.frames[0].shape == (48, 160, 3)


def test_example_video_if_present():
    bikes = Path(__file__).resolve().parent.parent / "assets" / "examples" / "bikes.mp4"
    if not bikes.is_file():
        pytest.skip("assets/examples/bikes.mp4 not shipped yet")
    info = mv.probe(bikes)
    assert info.frames > 0 and info.duration > 0


# ------------------------------------------------------------------------------------------------ bad files
def _audio_only(path):
    with av.open(str(path), "w") as c:
        st = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for p in list(st.encode(fr)) + list(st.encode()):
            c.mux(p)
    return path


def _empty_video(path):
    c = av.open(str(path), "w")
    st = c.add_stream("libx264", rate=10)
    st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()                              # writes the header: a valid MP4 with zero video frames
    c.close()
    assert path.stat().st_size > 0
    return path


def bad_videos(tmp_path):
    """name -> (path, expected message fragment)."""
    clip, _ = make_clip(tmp_path / "ok.mp4", frames=6)
    (tmp_path / "unknown_codec.mp4").write_bytes(clip.read_bytes().replace(b"avc1", b"zzz1"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("this is not a video\n" * 20)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    long_frames = [np.zeros((16, 16, 3), np.uint8)] * 310
    mv.encode_h264(long_frames, tmp_path / "long.mp4", fps=1.0)                # 310 s at 1 fps
    return {
        "unknown codec": (tmp_path / "unknown_codec.mp4", "codec that cannot be decoded"),
        "zero bytes": (tmp_path / "empty.mp4", "empty (0 bytes)"),
        "text file": (tmp_path / "notes.txt", "not a readable video"),
        "garbage": (tmp_path / "garbage.mp4", "not a readable video"),
        "audio only": (_audio_only(tmp_path / "audio.wav"), "no video stream"),
        "no frames": (_empty_video(tmp_path / "noframes.mp4"), "no frames"),
        "over-long": (tmp_path / "long.mp4", "the limit is 300 s"),
    }


def test_bad_videos_give_clear_errors(tmp_path):
    for name, (path, message) in bad_videos(tmp_path).items():
        with pytest.raises(mv.VideoReadError, match=re.escape(message)):
            mv.sample_frames(path)
        assert name


def test_resolution_limit(tmp_path):
    path, _ = make_clip(tmp_path / "clip.mp4", frames=2, width=64, height=48)
    with pytest.raises(mv.VideoReadError, match="megapixels"):
        mv.probe(path, max_pixels=1000)
