"""A node's home directory: its config, database and secret.

::

    HOME/
      node.toml      config (id, name, kind, county, limits)
      node.db        SQLite database (WAL) — raw records stay here
      secret.key     32 random bytes, 0600: the HMAC key for student numbers
      signing.key    Ed25519 private key, 0600: signs answers, log entries, checkpoints
      tls.key, identity.json, request.json
                     the node's federation identity; after `fedscreen pki issue` also
                     tls.pem, ca.pem, manifest.json, authority.pub
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from fedscreen._util.files import write_new_file
from fedscreen._util.sqlite import transaction
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError
from fedscreen.node import store
from fedscreen.policy import (
    NODE_KINDS,
    Policy,
    county_policy_path,
    default_policy_dir,
    load_node_policy,
)
from fedscreen.policy.default import PROVINCE_FILE
from fedscreen.tlog import memberlog
from fedscreen.tlog.export import LogExport
from fedscreen.trust.identity import create_identity
from fedscreen.trust.manifest import Manifest
from fedscreen.trust.scope import county_of, node_place, node_scope

CONFIG_FILE: Final = "node.toml"
DATABASE_FILE: Final = "node.db"
SECRET_FILE: Final = "secret.key"  # noqa: S105 - a file name, not a secret
SIGNING_KEY_FILE: Final = "signing.key"
SECRET_BYTES: Final = 32
NODE_ID_PATTERN: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{1,31}")
#: a school code as exports carry it (node.validate.SCHOOL_ID accepts the same)
SCHOOL_ID_PATTERN: Final = re.compile(r"[0-9A-Za-z_-]{4,20}")
#: problems listed for a rejected file before the rest are only counted
DEFAULT_MAX_PROBLEMS: Final = 50


@dataclass(frozen=True)
class NodeConfig:
    """A node's resolved configuration."""

    home: Path
    node_id: str
    name: str
    #: rows of a screening export must carry this county code (a university's: the
    #: county where its campus is registered; a school's: the county it belongs to)
    county_code: str
    #: "county", "university" or "school": which columns it holds (the catalogue's
    #: [kinds]) and which exports it accepts
    kind: str = "county"
    #: a school's or university's own school code: every row it ingests carries it
    #: (default: the node id); "" for a county node, which holds many schools
    school_id: str = ""
    max_problems: int = DEFAULT_MAX_PROBLEMS
    #: the provincial catalogue; None: the one fedscreen ships (policy/catalogue/)
    province_policy: Path | None = None
    #: this county's stricter document; None: the shipped counties/<county>.toml if present
    county_policy: Path | None = None

    @property
    def database(self) -> Path:
        """The node's SQLite database file."""
        return self.home / DATABASE_FILE

    def policy(self) -> Policy:
        """The merged policy this node enforces: catalogue ∩ county document, restricted
        to the columns its kind holds."""
        province = self.province_policy
        county = self.county_policy
        # a university is under no county's rules; a school is under its county's
        if province is None:
            directory = default_policy_dir()
            province = directory / PROVINCE_FILE
            if county is None and self.kind != "university":
                candidate = county_policy_path(directory, self.county_code)
                county = candidate if candidate.is_file() else None
        return load_node_policy(province, county, kind=self.kind)

    def signing_key(self) -> SigningKey:
        """The node's Ed25519 key: signs its answers, log entries and checkpoints."""
        return SigningKey.load(self.home / SIGNING_KEY_FILE)

    def secret(self) -> bytes:
        """The node secret (HMAC key for student numbers)."""
        path = self.home / SECRET_FILE
        data = path.read_bytes()
        if len(data) != SECRET_BYTES:
            raise ConfigError(f"{path}: node secret must be {SECRET_BYTES} bytes")
        return data


def _toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes
    return json.dumps(value, ensure_ascii=False)


def init_home(
    home: Path,
    *,
    node_id: str,
    name: str,
    county_code: str | None = None,
    kind: str = "county",
    school_id: str | None = None,
) -> NodeConfig:
    """Create a node home; refuses a directory that already holds a node.

    ``kind``: a county node (``county_code`` defaults to its id), a university (its own
    code as id; ``county_code`` where its campus is registered, required) or a school
    (``county_code`` of its county, required). A university's and a school's rows all
    carry ``school_id`` (default: the node id).
    """
    if not NODE_ID_PATTERN.fullmatch(node_id):
        raise ConfigError(f"node id {node_id!r}: use 2-32 letters, digits, '_' or '-'")
    if kind not in NODE_KINDS:
        raise ConfigError(f"node kind {kind!r}: one of {', '.join(NODE_KINDS)}")
    if kind != "county" and not county_code:
        raise ConfigError(f"a {kind} node needs --county (the county code of its rows)")
    if kind == "county" and school_id:
        raise ConfigError("--school is for a school or university node, not a county's")
    county = county_code or node_id
    if not re.fullmatch(r"[0-9]{6}", county):
        raise ConfigError(f"county code {county!r}: six digits (GB/T 2260), e.g. 130102")
    school = "" if kind == "county" else (school_id or node_id)
    if school and not SCHOOL_ID_PATTERN.fullmatch(school):
        raise ConfigError(f"school id {school!r}: 4-20 letters, digits, '_' or '-'")
    if home.exists() and any(home.iterdir()):
        raise ConfigError(f"{home} is not empty; refusing to overwrite an existing home")
    home.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    config_text = (
        "# fedscreen node configuration\n"
        "[node]\n"
        f"id = {_toml_str(node_id)}\n"
        f"name = {_toml_str(name)}\n"
        f"kind = {_toml_str(kind)}\n"
        f"county_code = {_toml_str(county)}\n"
        + (f"school_id = {_toml_str(school)}\n" if school else "")
        + f"created = {_toml_str(created)}\n\n"
        "[policy]\n"
        '# province = "/etc/fedscreen/province.toml"   # default: the catalogue fedscreen ships\n'
        + (
            "# county = none by default: a university is under no county's document\n\n"
            if kind == "university"
            else '# county = "/etc/fedscreen/130102.toml"  # default: the shipped '
            "counties/<county>.toml\n\n"
        )
        + "[ingest]\n"
        "# problems listed for a rejected file before the rest are only counted\n"
        f"max_problems = {DEFAULT_MAX_PROBLEMS}\n"
    )
    write_new_file(home / SECRET_FILE, secrets.token_bytes(SECRET_BYTES), mode=0o600, what="secret")
    # the node's Ed25519 and TLS keys and its certificate request (fedscreen pki issue signs it)
    create_identity(
        home,
        member_id=node_id,
        role="node",
        name=name,
        level=kind,
        scope=node_scope(kind, county),
    )
    conn = store.connect(home / DATABASE_FILE)
    try:
        with transaction(conn, immediate=False):
            store.create_schema(conn)
    finally:
        conn.close()
    # the config is written last: a home without it is recognisably unfinished
    (home / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    return load_config(home)


def _path(home: Path, value: object) -> Path | None:
    """A configured path; relative paths are relative to the home."""
    return None if value is None else home / str(value)


def load_config(home: Path) -> NodeConfig:
    """Read and validate a node home's configuration."""
    path = home / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{home} is not a node home (no {CONFIG_FILE}); run `fedscreen node init`"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        node = data["node"]
        max_problems = int(data.get("ingest", {}).get("max_problems", DEFAULT_MAX_PROBLEMS))
        policy = data.get("policy", {})
        # a node.toml older than node kinds is a county's
        kind = str(node.get("kind", "county"))
        if kind not in NODE_KINDS:
            raise ConfigError(f"{path}: node kind {kind!r}: one of {', '.join(NODE_KINDS)}")
        school_id = str(node.get("school_id", ""))
        if (kind != "county") != bool(school_id):
            raise ConfigError(f"{path}: school_id is set exactly for school and university nodes")
        return NodeConfig(
            home=home,
            node_id=str(node["id"]),
            name=str(node["name"]),
            county_code=str(node["county_code"]),
            kind=kind,
            school_id=school_id,
            max_problems=max_problems,
            province_policy=_path(home, policy.get("province")),
            county_policy=_path(home, policy.get("county")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or bad setting {exc}") from None


def export_log(home: Path) -> LogExport:
    """The node's log in ``home``, as exported for auditors."""
    config = load_config(home)
    conn = store.connect(config.database)
    try:
        return memberlog.export_log(conn, member_id=config.node_id)
    finally:
        conn.close()


def check_placement(config: NodeConfig, manifest: Manifest) -> None:
    """ConfigError unless ``node.toml``'s kind and county agree with the manifest's entry
    for this node (the authority's word): a university's config edited to ``county``
    would put its freshmen in a county's figures under a policy the manifest never
    gave it."""
    member = manifest.find(config.node_id)
    if member is None or member.role != "node":
        return  # not issued yet (or not a node): nothing to compare with
    kind = member.level or "county"
    county = county_of(member)
    if kind != config.kind or (kind != "university" and county != config.county_code):
        raise ConfigError(
            f"{config.home / CONFIG_FILE} says a {config.kind} node of county "
            f"{config.county_code}, but manifest version {manifest.version} lists node "
            f"{config.node_id} as a {kind} node at {node_place(member)}; fix node.toml or ask "
            "the province to re-issue"
        )
