"""Dataset errors. Every message names the file, key, episode or timestamp and says what to do."""


class DatasetError(Exception):
    """A dataset on disk is missing, corrupt, partial or inconsistent."""


class MissingVideoError(DatasetError, FileNotFoundError):
    """A video file declared by the metadata is absent or unreadable."""


class FrameToleranceError(DatasetError):
    """A decoded video frame is farther than `tolerance_s` from the requested timestamp."""


class DatasetExistsError(DatasetError, FileExistsError):
    """A writer was pointed at a non-empty directory without `overwrite=True`."""


class MissingChunkError(DatasetError, FileNotFoundError):
    """A zarr chunk file that must exist (it holds rows of a committed episode) is absent."""


class CorruptChunkError(DatasetError):
    """A zarr chunk file exists but cannot be decoded (random or truncated bytes)."""
