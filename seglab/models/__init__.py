"""Model families. Importing this package registers every model factory."""

from seglab.models import instance, semantic  # noqa: F401
