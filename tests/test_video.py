"""Videos and folders of frames (clipseg_jax.video, `segment` on a video or --frames): the maps against
`predict` frame by frame, smoothing against a hand-computed moving average, prompts encoded once, the
files written (PNG frames; mp4 read back with PyAV where it is installed), and bad input."""

import importlib.util
import shlex
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from clipseg_jax import video
from clipseg_jax.cli.main import main

PROMPTS = ["a red circle", "a blue square"]


def moving_disc(n: int = 10, h: int = 48, w: int = 64) -> list[np.ndarray]:
  """A red disc crossing a grey frame left to right: frames that change, so smoothing shows."""
  yy, xx = np.mgrid[:h, :w]
  frames = []
  for t in range(n):
    f = np.full((h, w, 3), 90, np.uint8)
    f[(yy - h // 2) ** 2 + (xx - 8 - 5 * t) ** 2 < 10**2] = (220, 30, 30)
    frames.append(f)
  return frames


def write_frames(folder, frames):
  folder.mkdir(parents=True, exist_ok=True)
  for t, f in enumerate(frames):  # names that sort wrongly as strings: f2 must come before f10
    Image.fromarray(f).save(folder / f"f{t}.png")
  return folder


def test_ema_by_hand():
  out = list(video.ema([np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([1.0])], 0.5))
  np.testing.assert_allclose(np.concatenate(out), [1.0, 0.5, 0.25, 0.625])
  assert [float(x) for x in video.ema([np.array(0.2), np.array(0.8)], 1.0)] == [0.2, 0.8]  # alpha 1: as they are
  for bad in (0, 1.5, -0.1, True):
    with pytest.raises(ValueError, match="alpha"):
      video.Ema(bad)


def test_frames_match_predict_and_smoothing_matches_hand_ema(tiny_model):
  frames = moving_disc(7)
  want = tiny_model.predict(frames, PROMPTS)  # [7, 2, H, W]: frame by frame, through predict
  got = [maps for _, maps in video.segment_frames(tiny_model, iter(frames), PROMPTS, batch_size=4)]
  np.testing.assert_allclose(np.stack(got), want, atol=1e-5)
  alpha, ema = 0.3, []
  for p in want:  # s_0 = p_0, s_t = alpha p_t + (1 - alpha) s_(t-1)
    ema.append(p if not ema else alpha * p + (1 - alpha) * ema[-1])
  smoothed = video.segment_frames(tiny_model, iter(frames), PROMPTS, batch_size=4, smooth=alpha)
  np.testing.assert_allclose(np.stack([m for _, m in smoothed]), np.stack(ema), atol=1e-5)
  masks = video.segment_frames(tiny_model, iter(frames), PROMPTS, batch_size=4, smooth=alpha, threshold=0.5)
  np.testing.assert_array_equal(np.stack([m for _, m in masks]), np.stack(ema) > 0.5)


def test_prompts_encoded_once_frames_batched(tiny_model, monkeypatch):
  calls = {"encode_text": 0, "encode_images": 0}
  for name in calls:
    original = getattr(tiny_model, name)

    def counted(*a, _original=original, _name=name, **k):
      calls[_name] += 1
      return _original(*a, **k)

    monkeypatch.setattr(tiny_model, name, counted)
  out = list(video.segment_frames(tiny_model, iter(moving_disc(7)), PROMPTS, batch_size=4))
  assert len(out) == 7 and out[0][1].shape == (2, 48, 64)
  assert calls == {"encode_text": 1, "encode_images": 2}  # 7 frames in batches of 4 and 3


def test_frames_folder_to_png_frames(tiny_model, tiny_dir, tmp_path, monkeypatch):
  frames = moving_disc(10)
  write_frames(tmp_path / "clip", frames)
  monkeypatch.chdir(tmp_path)
  # The fixture's model (its stages already compiled); the video-file test below loads --checkpoint itself.
  monkeypatch.setattr("clipseg_jax.load_model", lambda *a, **k: tiny_model)
  argv = ["segment", "clip", "--frames", "--checkpoint", tiny_dir, "--batch-size", "4", "--smooth", "0.5"]
  assert main([*argv, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out", "out"]) == 0
  names = [f"f{t}.png" for t in range(10)]
  for sub in ("clip_0_a-red-circle_mask", "clip_1_a-blue-square_mask", "clip_overlay"):
    assert sorted((tmp_path / "out" / sub).iterdir()) == sorted(tmp_path / "out" / sub / n for n in names)
  probs, ema = tiny_model.predict(frames, PROMPTS), []  # frames in numeric order: f2 before f10
  for p in probs:
    ema.append(p if not ema else 0.5 * p + 0.5 * ema[-1])
  for t in (0, 2, 9):
    mask = np.asarray(Image.open(tmp_path / "out" / "clip_1_a-blue-square_mask" / f"f{t}.png"))
    np.testing.assert_array_equal(mask, np.round(ema[t][1] * 255).astype(np.uint8))
    overlay = Image.open(tmp_path / "out" / "clip_overlay" / f"f{t}.png")
    assert overlay.size == (64, 48) and overlay.mode == "RGB"
  # A second run refuses to overwrite, before loading anything; --overwrite replaces.
  prompts = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
  assert main([*argv, *prompts, "--out", "out"]) == 2
  # --overwrite replaces the folders whole: a shorter clip leaves none of the longer one's frames behind.
  for t in range(4, 10):
    (tmp_path / "clip" / f"f{t}.png").unlink()
  assert main([*argv, *prompts, "--out", "out", "--overwrite"]) == 0
  for sub in ("clip_0_a-red-circle_mask", "clip_overlay"):
    assert sorted(f.name for f in (tmp_path / "out" / sub).iterdir()) == [f"f{t}.png" for t in range(4)]
  with pytest.raises(FileExistsError, match="clip_0_a-red-circle_mask already exists"):  # the library refuses too
    video.write_outputs(iter([]), tmp_path / "out", "clip", PROMPTS, kinds=["png"])


def test_video_file_in_and_out(tiny_model, tiny_dir, tmp_path, monkeypatch):
  av = pytest.importorskip("av", reason="video files need PyAV (the 'video' extra)")
  frames = moving_disc(8)
  path = tmp_path / "clip.mp4"
  with av.open(str(path), mode="w") as container:  # written here with PyAV directly, not by clipseg_jax
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

  def decode(p):
    with av.open(str(p)) as c:
      s = c.streams.video[0]
      return [fr.to_ndarray(format="rgb24") for fr in c.decode(s)], float(s.average_rate)

  decoded, _ = decode(path)  # what the model sees: the video's frames after H.264
  monkeypatch.chdir(tmp_path)
  cmd = (
    f'segment clip.mp4 --prompt "{PROMPTS[0]}" --prompt "{PROMPTS[1]}" --checkpoint {tiny_dir} --write both --out masks'
  )
  assert main(shlex.split(cmd)) == 0
  mask_frames, fps = decode(tmp_path / "masks" / "clip_0_a-red-circle_mask.mp4")
  assert len(mask_frames) == 8 and fps == 12.0 and mask_frames[0].shape == (48, 64, 3)
  want = np.round(tiny_model.predict(decoded, PROMPTS)[:, 0] * 255)
  pngs = [np.asarray(Image.open(tmp_path / "masks" / "clip_0_a-red-circle_mask" / f"{t:06d}.png")) for t in range(8)]
  np.testing.assert_array_equal(np.stack(pngs), want.astype(np.uint8))  # PNG frames: exact
  err = np.abs(np.stack([m[..., 0] for m in mask_frames]).astype(float) - want)
  assert err.mean() < 2 and err.max() < 40  # H.264 at crf 18: a few levels
  overlay, _ = decode(tmp_path / "masks" / "clip_overlay.mp4")
  assert len(overlay) == 8


def test_odd_sized_frames_are_padded_for_h264(tmp_path):
  av = pytest.importorskip("av", reason="video files need PyAV (the 'video' extra)")
  writer = video.VideoWriter(tmp_path / "odd.mp4", 10)
  for _ in range(3):
    writer.write(np.full((15, 21), 200, np.uint8))
  with pytest.raises(ValueError, match="a video has one size"):
    writer.write(np.zeros((20, 30), np.uint8))
  writer.close()
  with av.open(str(tmp_path / "odd.mp4")) as c:
    frames = [f.to_ndarray(format="gray") for f in c.decode(c.streams.video[0])]
  assert len(frames) == 3 and frames[0].shape == (16, 22) and abs(int(frames[0][7, 10]) - 200) <= 3


def test_frames_beyond_max_side_are_read_downscaled(tmp_path, monkeypatch):
  """As images are: an 8K video would otherwise hold GBs per batch."""
  pytest.importorskip("av", reason="video files need PyAV (the 'video' extra)")
  writer = video.VideoWriter(tmp_path / "big.mp4", 10)
  for _ in range(2):
    writer.write(np.full((48, 64), 120, np.uint8))
  writer.close()
  monkeypatch.setattr(video.preprocess, "MAX_SIDE", 32)
  with pytest.warns(UserWarning, match="64x48 frames are read at 32x24"):
    frames = video.open_frames(tmp_path / "big.mp4")
  assert [f.shape[:2] for f in frames.frames] == [(24, 32), (24, 32)]


def test_bad_input(tiny_dir, tmp_path, capsys, monkeypatch):
  write_frames(tmp_path / "clip", moving_disc(2))
  (tmp_path / "empty").mkdir()
  write_frames(tmp_path / "twice", moving_disc(2))
  shutil.copy(tmp_path / "twice" / "f0.png", tmp_path / "twice" / "f0.jpg")  # both would write f0.png
  base = ["--prompt", "a", "--checkpoint", tiny_dir, "--out", str(tmp_path / "o")]
  cases = [
    (["segment", str(tmp_path / "clip"), "--smooth", "0.5"], "only for a video file or a folder given with --frames"),
    (["segment", str(tmp_path / "empty"), "--frames"], "no frames"),
    (["segment", str(tmp_path / "clip" / "f0.png"), "--frames"], "is not one"),
    (["segment", str(tmp_path / "clip"), str(tmp_path / "empty"), "--frames"], "one frames folder at a time"),
    (["segment", str(tmp_path / "clip"), "--frames", "--label-map"], "for images only"),
    (["segment", str(tmp_path / "clip"), "--frames", "--image-size", "50"], "multiple of the patch size"),
    (["segment", str(tmp_path / "missing.mp4")], "not found"),
    (["segment", str(tmp_path / "twice"), "--frames"], "share a name but not an extension"),
  ]
  for argv, message in cases:
    assert main([*argv, *base]) == 2, argv
    assert message in capsys.readouterr().err, argv
  with pytest.raises(SystemExit):
    main(["segment", str(tmp_path / "clip"), "--frames", "--smooth", "0", *base])
  assert "must be in (0, 1]" in capsys.readouterr().err
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  if importlib.util.find_spec("av") is not None:
    assert main(["segment", str(tmp_path / "broken.mp4"), *base]) == 2
    assert "cannot read" in capsys.readouterr().err
  monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
  assert main(["segment", str(tmp_path / "broken.mp4"), *base]) == 2
  err = capsys.readouterr().err
  assert "optional 'video' dependencies" in err and "[video]" in err


# The commands of the README's video section, run exactly as written there (from a folder holding them).
README_COMMANDS = [
  'clipseg-jax segment clip.mp4 --prompt "a red circle" --smooth 0.5 --out masks/',
  'clipseg-jax segment frames/ --frames --prompt "a red circle" --out masks/',
]


def test_readme_video_commands(tmp_path, monkeypatch):
  av = pytest.importorskip("av", reason="video files need PyAV (the 'video' extra)")
  frames = moving_disc(6, 96, 128)
  write_frames(tmp_path / "frames", frames)
  with av.open(str(tmp_path / "clip.mp4"), mode="w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  monkeypatch.chdir(tmp_path)
  for command in README_COMMANDS:
    assert main(shlex.split(command)[1:]) == 0, command
  assert (tmp_path / "masks" / "clip_0_a-red-circle_mask.mp4").stat().st_size > 0
  assert len(list((tmp_path / "masks" / "frames_overlay").iterdir())) == 6
  # The embedded model finds the disc: the mask is bright on it and dark on the grey around it.
  mask = np.asarray(Image.open(tmp_path / "masks" / "frames_0_a-red-circle_mask" / "f3.png"), np.float32) / 255
  on = (np.mgrid[:96, :128][0] - 48) ** 2 + (np.mgrid[:96, :128][1] - 23) ** 2 < 8**2
  assert mask[on].mean() > 0.5 > mask[~on].mean()
