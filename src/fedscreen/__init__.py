"""fedscreen: privacy-preserving federated statistics for student mental-health screening."""

from fedscreen.errors import FedscreenError

__all__ = ["FedscreenError", "__version__"]
__version__ = "0.1.0"
