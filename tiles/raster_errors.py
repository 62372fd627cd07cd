"""The error of every raster the user gives that cannot be used."""

from common.cli import UserError


class RasterError(UserError, ValueError):
    """A file that cannot be used as a map raster; the message names the file and the fix."""
