"""The Colab notebook: its Colab parts are in place (badge, install cell, devices, bf16 advice), and it runs
top to bottom with a local random-weight checkpoint and image substituted for the defaults (as papermill
does: a cell of new parameter values after the `parameters` cell), the install and the app skipped."""

import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover
  import tomli as tomllib

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "clipseg_quickstart.ipynb"
BADGE = re.compile(
  r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
  r"\(https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/experiments/notebooks/clipseg_quickstart\.ipynb\)"
)


def with_parameters(nb, **values):
  idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  return nb


def repository_setting() -> str:
  """The GitHub owner/name that pyproject.toml's [project.urls] Repository names."""
  project = tomllib.loads((NOTEBOOK.parents[2] / "pyproject.toml").read_text())["project"]
  return project["urls"]["Repository"].removeprefix("https://github.com/")


def code(nb) -> list[str]:
  return [c.source for c in nb.cells if c.cell_type == "code"]


def test_colab_parts():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  badge = BADGE.search(nb.cells[0].source)
  assert badge, "the first cell needs an Open in Colab badge for this notebook's path"
  params = code(nb)[0]  # first, so that the install cell can use REPO
  assert "parameters" in next(c for c in nb.cells if c.cell_type == "code").metadata["tags"]
  assert f'REPO = "{badge.group(1)}"' in params  # the badge and the install name the same repository
  assert badge.group(1) == repository_setting() != "ORG/REPO"  # ... the one pyproject names, filled in
  install = code(nb)[1]
  assert 'importlib.util.find_spec("clipseg_jax") is None' in install  # skipped where installed (CI)
  assert '"clipseg-jax[demo] @ git+https://github.com/{REPO}@{REF}"' in install
  assert "#subdirectory={PACKAGE_PATH}" in install and "%pip install" in install and "Restart" in install
  text = "\n".join(c.source for c in nb.cells)
  assert "jax.devices()" in text and "jnp.bfloat16" in text and "dtype=DTYPE" in text
  assert 'CHECKPOINT = "embedded:synthetic"' in params and "LAUNCH_APP = True" in params


@pytest.mark.slow  # starts a Jupyter kernel
def test_notebook_executes(tiny_checkpoint, tmp_path):
  from nbclient import NotebookClient

  photo = tmp_path / "photo.png"
  Image.fromarray(np.random.RandomState(0).randint(0, 256, (60, 80, 3), np.uint8)).save(photo)
  nb = with_parameters(
    nbformat.read(NOTEBOOK, as_version=4),
    CHECKPOINT=tiny_checkpoint[0],
    IMAGE=str(photo),
    PROMPTS=["a cat", "a dog"],
    TOLERANCE=1e-4,
    LAUNCH_APP=False,
  )
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "is already installed: nothing to do" in text  # the install cell skipped itself
  assert "compute dtype: float32" in text  # CPU: float32
  assert "max |JAX - PyTorch| / max |PyTorch| =" in text
  assert "LAUNCH_APP is False" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 5  # the input, the overlay, the text masks, the support, the visual masks
