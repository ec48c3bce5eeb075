"""The HTTP service, and the ``lgm`` command that fronts training, detector and service."""
