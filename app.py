"""The Gradio demo as a Hugging Face Space runs it (`python app.py`): the embedded CLIPSeg, offline.

Set CLIPSEG_CHECKPOINT to serve another checkpoint (anything `clipseg_jax.load_model` takes, e.g.
CIDAS/clipseg-rd64-refined). Host and port come from gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT,
which Spaces set. Locally, `clipseg-jax demo-app` does the same with flags.
"""

import os

from clipseg_jax.web.gradio_app import DEFAULT_CHECKPOINT, launch

if __name__ == "__main__":
  launch(checkpoint=os.environ.get("CLIPSEG_CHECKPOINT", DEFAULT_CHECKPOINT))
