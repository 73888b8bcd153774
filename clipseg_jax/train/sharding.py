"""The device mesh and where arrays live on it: batch on the data axis, parameters by rule."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(shape, axes) -> jax.sharding.Mesh:
  """A mesh of `shape` over all devices; one -1 entry takes the remaining devices."""
  shape, n = list(shape), jax.device_count()
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {tuple(shape)} and axes {tuple(axes)} differ in length")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if n % rest:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide the {n} devices")
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n:
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, there are {n}")
  # Auto axes: shardings are constraints XLA propagates (make_mesh defaults to Explicit axes).
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, axis: str, size: int) -> P:
  """Split the largest dimension divisible by the axis size; replicate what cannot be split."""
  if size == 1 or not shape:
    return P()
  dims = [i for i in np.argsort(shape)[::-1] if shape[i] % size == 0 and shape[i] >= size]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[int(dims[0])] = axis
  return P(*spec)


def param_shardings(params, mesh, mode: str = "replicated"):
  """Shardings for a params tree: replicated, or FSDP-style over the mesh's second (model) axis."""
  if mode == "replicated":
    return jax.tree.map(lambda _: replicated(mesh), params)
  if mode == "fsdp":
    axis = mesh.axis_names[-1]
    size = mesh.shape[axis]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), axis, size)), params)
  raise ValueError(f"unknown parameter sharding {mode!r}; use 'replicated' or 'fsdp'")


def param_shardings_by_part(params: dict, mesh, clip_mode: str = "replicated"):
  """Shardings for a (trainable or frozen) part of the params: CLIP's leaves by `clip_mode`
  (`mesh.clip_sharding`), everything else (the small decoder) replicated."""
  return {k: param_shardings(v, mesh, clip_mode if k == "clip" else "replicated") for k, v in params.items()}


def check_batch(batch_size: int, mesh):
  data = mesh.shape[mesh.axis_names[0]]
  if batch_size % data:
    raise ValueError(f"batch_size {batch_size} does not divide over the {data} devices of the data axis")
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size {batch_size} does not divide over {jax.process_count()} processes")


def global_batch(local: dict, sharding) -> dict:
  """Each process's slice of the batch -> global arrays sharded on the data axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
