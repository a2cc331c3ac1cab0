"""Leaf utilities shared by every room: atomic file output, layer-index parsing, URL redaction, normalisation,
lazy package re-exports.

Nothing here imports another module of the package (except :mod:`dinov3_integration._logging`), so any room may
import it.
"""
