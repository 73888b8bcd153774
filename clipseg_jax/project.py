"""Where the project lives and how to install its optional extras, read from the package's metadata (the
one setting is pyproject's `[project.urls] Repository`)."""

from importlib import metadata

DISTRIBUTION = "clipseg-jax"
GITHUB = "https://github.com/"


def repository() -> str | None:
  """The GitHub `owner/name` the package was built from, or None where its metadata names none."""
  try:
    urls = metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
  except metadata.PackageNotFoundError:
    return None
  for entry in urls:
    label, _, url = entry.partition(",")
    url = url.strip().removesuffix(".git").rstrip("/")
    if label.strip().lower() == "repository" and url.startswith(GITHUB):
      return url[len(GITHUB) :]
  return None


def install_hint(extra: str) -> str:
  """The pip command that adds `extra` today (from the repository: the package is not on PyPI yet)."""
  repo = repository()
  if repo is None:
    return f"pip install '.[{extra}]' in a checkout of clipseg-jax"
  return f"pip install '{DISTRIBUTION}[{extra}] @ git+{GITHUB}{repo}'"
