"""The second aggregator's home: its config, its identity and its database.

::

    HOME/
      aggregator.toml   config (its member id; optionally another provincial catalogue)
      aggregator.db     its partials and its transparency log (SQLite, WAL, synchronous=FULL)
      signing.key, tls.key, tls.pem, ca.pem, manifest.json   its federation identity

The identity is made where the aggregator runs (:func:`init_aggregator`, as a
coordinator's is) and issued by the province (``fedscreen pki issue``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fedscreen._util.sqlite import connect
from fedscreen.errors import ConfigError
from fedscreen.policy import Policy, load_policy
from fedscreen.protocol.answer import shipped_catalogue
from fedscreen.trust.identity import Identity, create_identity, load_identity

__all__ = [
    "CONFIG_FILE",
    "DATABASE_FILE",
    "ROLE",
    "AggregatorHome",
    "init_aggregator",
    "is_aggregator_home",
]

CONFIG_FILE: Final = "aggregator.toml"
DATABASE_FILE: Final = "aggregator.db"
#: the manifest role, and the name of its log (checkpoint origin ``fedscreen.aggregator/ID``)
ROLE: Final = "aggregator"


def init_aggregator(home: Path, *, member_id: str, name: str) -> None:
    """Create an aggregator home: config, database and identity (keys + certificate request)."""
    if (home / CONFIG_FILE).exists():
        raise ConfigError(f"{home} already holds an aggregator; refusing to overwrite")
    home.mkdir(parents=True, exist_ok=True)
    create_identity(home, member_id=member_id, role=ROLE, name=name, level="province")
    connect(home / DATABASE_FILE).close()
    (home / CONFIG_FILE).write_text(
        "# fedscreen aggregator (the second aggregator of secure queries)\n[aggregator]\n"
        f"id = {json.dumps(member_id)}\n\n[policy]\n"
        '# province = "/etc/fedscreen/province.toml"   # default: the catalogue fedscreen ships\n',
        encoding="utf-8",
    )


def is_aggregator_home(home: Path) -> bool:
    """Whether ``home`` holds an aggregator's config."""
    return (home / CONFIG_FILE).is_file()


@dataclass(frozen=True)
class AggregatorHome:
    """An aggregator home as configured (nothing opened: each user opens what it needs)."""

    home: Path
    identity: Identity
    #: the provincial catalogue it holds secure queries to (min_nodes, secure columns)
    catalogue: Policy

    @property
    def member_id(self) -> str:
        """Its member id."""
        return self.identity.member_id

    @property
    def database(self) -> Path:
        """Its SQLite database."""
        return self.home / DATABASE_FILE

    @classmethod
    def open(cls, home: Path) -> AggregatorHome:
        """Read the config and the identity; ConfigError if ``home`` is not an aggregator's."""
        try:
            config = tomllib.loads((home / CONFIG_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{home} is not an aggregator home; run aggregator init") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{home / CONFIG_FILE}: {exc}") from None
        identity = load_identity(home)
        if identity.role != ROLE:
            raise ConfigError(f"{home} holds a {identity.role} identity, not an aggregator")
        stated = config.get("aggregator", {}).get("id")
        if stated is not None and stated != identity.member_id:
            raise ConfigError(f"{home / CONFIG_FILE} names another member than its identity")
        province = config.get("policy", {}).get("province")
        catalogue = load_policy(home / province) if province else shipped_catalogue()
        return cls(home, identity, catalogue)
