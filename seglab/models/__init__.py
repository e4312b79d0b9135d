"""Model families. Importing this package registers every model factory."""

from seglab.models import semantic  # noqa: F401
