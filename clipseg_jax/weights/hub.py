"""Publishing a folder on the Hugging Face Hub through huggingface_hub's upload API (downloads are
`io.resolve`). Failures come back as one OSError that names the repository."""

from __future__ import annotations

import os

REPO_TYPE = "model"


def check_repo_id(repo_id: str):
  """A ValueError for a repo id the Hub would refuse ("org/name"), before any work is done."""
  from huggingface_hub.utils import HFValidationError, validate_repo_id

  if not isinstance(repo_id, str) or repo_id.count("/") != 1:
    raise ValueError(f"repository {repo_id!r} must be named as ORG_OR_USER/NAME")
  try:
    validate_repo_id(repo_id)
  except HFValidationError as e:
    raise ValueError(f"repository {repo_id!r} is not a valid Hub name: {e}") from None


def upload_folder(
  folder: str | os.PathLike,
  repo_id: str,
  *,
  private: bool = False,
  revision: str | None = None,
  token: str | None = None,
  commit_message: str | None = None,
) -> str:
  """Create `repo_id` if needed (private or not; an existing repo keeps its visibility), create branch
  `revision` if given, and upload `folder` to it in one commit. Returns the commit's URL."""
  from huggingface_hub import HfApi

  check_repo_id(repo_id)
  api = HfApi(token=token)
  where = repo_id + (f" (branch {revision})" if revision else "")
  try:
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=REPO_TYPE)
    if revision:
      api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=REPO_TYPE)
    info = api.upload_folder(
      repo_id=repo_id,
      folder_path=str(folder),
      revision=revision,
      repo_type=REPO_TYPE,
      commit_message=commit_message or "Upload CLIPSeg model with clipseg-jax",
    )
  except Exception as e:  # noqa: BLE001 - network, auth and Hub errors, re-raised with the repository named
    raise OSError(f"could not upload to the Hugging Face Hub repository {where}: {e}") from e
  return str(getattr(info, "commit_url", None) or info)
