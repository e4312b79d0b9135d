"""Model families. Importing this package registers every model factory."""

from seglab.models import instance, parsing, semantic  # noqa: F401
