"""The Colab notebook runs top to bottom, with a local random-weight checkpoint and image substituted
for the hub ones (as papermill does: a cell of new parameter values after the `parameters` cell)."""

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

pytestmark = pytest.mark.slow  # starts a Jupyter kernel

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "clipseg_quickstart.ipynb"


def with_parameters(nb, **values):
  idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  return nb


def test_notebook_executes(tiny_checkpoint, tmp_path):
  photo = tmp_path / "photo.png"
  Image.fromarray(np.random.RandomState(0).randint(0, 256, (60, 80, 3), np.uint8)).save(photo)
  nb = with_parameters(
    nbformat.read(NOTEBOOK, as_version=4),
    CHECKPOINT=tiny_checkpoint[0],
    IMAGE=str(photo),
    PROMPTS=["a cat", "a dog"],
    TOLERANCE=1e-4,
  )
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "max |JAX - PyTorch| / max |PyTorch| =" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4  # the input, the overlay, and two mask grids
