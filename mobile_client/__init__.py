"""pocketgrid's thin client (requests only): library and CLI."""
from .client import ApiError, Client
from pocketgrid.transfer import DownloadFailed, DownloadResult, IntegrityError, download

__all__ = ["ApiError", "Client", "DownloadFailed", "DownloadResult", "IntegrityError", "download"]
