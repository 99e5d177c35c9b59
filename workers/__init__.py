"""rigpipe's workers: one sub-package per worker kind, each built on ``pipeline`` only."""
