"""Input pipeline: datasets, PhraseCut+ sampling, visual prompt engineering, loaders (issue 3)."""
