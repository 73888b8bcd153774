"""`clipseg-jax serve`: a page to segment an uploaded image with typed prompts, and its JSON API."""
