"""Human parsing models (LIP's 20 labels by default): SCHP/CE2P, JPPNet and SS-JPPNet, PGN, Parsing R-CNN."""

from seglab.models.parsing import ce2p, jppnet, parsing_rcnn, pgn  # noqa: F401
