"""Where the policy documents fedscreen ships with are.

The provincial catalogue, the example county document and the annual report plan
ship inside the package (``fedscreen/policy/catalogue/``), so every installation —
a wheel as much as a source checkout — has them. ``policies/`` at the top of the
repository holds the same files as editable examples (a test keeps the two
identical); an installation that changes its catalogue points ``[policy]`` in its
``node.toml`` or ``coordinator.toml`` at its own copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fedscreen.errors import PolicyError

__all__ = ["PROVINCE_FILE", "county_policy_path", "default_policy_dir"]

PROVINCE_FILE: Final = "province.toml"


def default_policy_dir() -> Path:
    """The shipped documents' directory: ``province.toml``, ``counties/``, ``reports/``.

    PolicyError if the installation lacks them (a broken install).
    """
    directory = Path(__file__).resolve().parent / "catalogue"
    if not (directory / PROVINCE_FILE).is_file():
        raise PolicyError(
            f"no {PROVINCE_FILE} in {directory}: this fedscreen installation is incomplete; "
            "reinstall it, or give the policy files' paths explicitly"
        )
    return directory


def county_policy_path(directory: Path, county: str) -> Path:
    """Where the county document of ``county`` (a GB/T 2260 code) lives under ``directory``."""
    return directory / "counties" / f"{county}.toml"
