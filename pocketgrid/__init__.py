"""pocketgrid: run heavy HTCondor jobs from a phone or any weak device."""
__version__ = "0.1.0"
