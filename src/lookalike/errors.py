"""Error types whose message is meant for the user: one sentence, what is wrong and what to do."""


class LookalikeError(Exception):
    """Base for errors that carry a user-facing one-sentence message."""


class DataError(LookalikeError):
    """The input data (a path, a collection, a download) is missing or unusable."""


class BadImageError(LookalikeError):
    """One image file (or uploaded blob) cannot be decoded into RGB pixels."""


class BackendUnavailable(LookalikeError):
    """An inference backend that cannot run here (not installed, no such hardware, conversion failed)."""


class WeightsUnavailableError(LookalikeError):
    """Pretrained weights are not in the local cache and cannot be downloaded."""


class GalleryError(LookalikeError):
    """A gallery folder is missing, incomplete, inconsistent or built with other settings."""


class IndexMismatchError(GalleryError):
    """A saved index does not belong to the gallery it is loaded with."""


class IndexRowsError(IndexMismatchError):
    """A saved index belongs to its gallery but holds other rows than the ones searched (see search.storage)."""


class TextQueryError(LookalikeError):
    """A text query cannot be searched: empty, too long for the text tower, or the gallery's model has no text tower."""


class IndexStaleError(GalleryError):
    """A saved index was built before its gallery was updated and could not follow the update: it must be rebuilt, never
    served."""


class EngineRefused(LookalikeError):
    """An engine cannot search this method: `--engine ray` fans out ivfpq-ondisk indexes, not others."""
