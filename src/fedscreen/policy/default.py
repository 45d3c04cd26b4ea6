"""Where the repository's policy documents are.

``policies/`` at the top of the source tree is the single copy of the provincial
catalogue and the example county documents; it is not packaged into wheels. An
installation from a checkout (``pip install -e .``) finds it here; any other
installation is given explicit paths by its configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fedscreen.errors import PolicyError

__all__ = ["PROVINCE_FILE", "county_policy_path", "default_policy_dir"]

PROVINCE_FILE: Final = "province.toml"


def default_policy_dir() -> Path:
    """The source tree's ``policies/`` directory; PolicyError if this is not a checkout."""
    # src/fedscreen/policy/default.py -> parents[3] is the repository root
    directory = Path(__file__).resolve().parents[3] / "policies"
    if not (directory / PROVINCE_FILE).is_file():
        raise PolicyError(
            f"no {PROVINCE_FILE} in {directory}: fedscreen is not running from a source "
            "checkout; give the policy files' paths explicitly"
        )
    return directory


def county_policy_path(directory: Path, county: str) -> Path:
    """Where the county document of ``county`` (a GB/T 2260 code) lives under ``directory``."""
    return directory / "counties" / f"{county}.toml"
