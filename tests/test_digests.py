"""One content digest (`weights.io.content_digest`) behind every format's: the digests files already hold
still verify, each format's framing recomputed here with hashlib alone."""

import hashlib
import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors.numpy import load_file

from clipseg_jax.weights import io


def arrays():
  rng = np.random.default_rng(0)
  return {
    "b": rng.normal(size=(3, 4)).astype(np.float32).T,  # not C-contiguous
    "a": np.float32(2.5),  # a scalar
    "c": rng.integers(0, 9, (2, 2, 2)).astype(np.int32),
    "d": np.ones((5,), ml_dtypes.bfloat16),
  }


def test_committed_safetensors_and_fingerprints_still_verify():
  path = io.EMBEDDED["embedded:synthetic"] / "decoder.safetensors"
  from safetensors import safe_open

  with safe_open(str(path), framework="numpy") as f:
    recorded = f.metadata()[io.DIGEST_KEY]
  assert io.state_digest(load_file(str(path))) == recorded
  from clipseg_jax import load_model

  marker = json.loads((path.parent / "clipseg_jax_decoder.json").read_text())
  assert io.fingerprint(load_model("embedded:synthetic").params["clip"]) == marker["clip_sha256"]


def test_each_format_frames_its_entries_as_before():
  state = arrays()
  h = hashlib.sha256()  # safetensors: sorted keys, JSON [key, dtype, shape], bytes
  for k in sorted(state):
    v = np.ascontiguousarray(state[k])
    h.update(json.dumps([k, v.dtype.str, list(v.shape)]).encode() + v.tobytes())
  assert io.state_digest(state) == h.hexdigest()

  tree = {"x": {"w": state["b"], "s": state["a"]}, "y": state["c"]}
  h = hashlib.sha256()  # fingerprints: float32 values by path, "['x']['s'](1,)" then bytes
  for name, leaf in (("['x']['s']", state["a"]), ("['x']['w']", state["b"]), ("['y']", state["c"])):
    a = np.ascontiguousarray(leaf, np.float32)
    h.update(f"{name}{a.shape}".encode() + a.tobytes())
  assert io.fingerprint(tree) == h.hexdigest()

  from clipseg_jax.train import checkpoints

  tree = {"p": jnp.asarray(state["b"]), "q": jnp.int32(7), "r": jnp.asarray(state["d"])}
  h = hashlib.sha256()  # training checkpoints: leaves in tree order, "<f4(4, 3);" then bytes
  for leaf in (state["b"], np.int32(7), state["d"]):
    x = np.ascontiguousarray(leaf)
    h.update(f"{x.dtype.str}{x.shape};".encode() + x.tobytes())
  assert checkpoints.digest(tree) == h.hexdigest()
  assert io.content_digest([("a", state["a"]), ("b", None)], lambda k, a: k) is None  # not all held here
