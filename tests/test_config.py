"""StorageConfig: the specification's defaults, loading precedence (TOML < env < keywords), validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dsm import ConfigError, StorageConfig
from dsm.config import FIELD_DOCS


def test_specification_defaults() -> None:
    c = StorageConfig()
    assert (c.region, c.gossip_interval_ms, c.anti_entropy_interval_ms, c.gossip_fanout) == ("default", 5000, 60000, 3)
    assert (c.max_immediate_neighbors, c.max_long_links) == (16, 16)
    assert (c.max_key_bytes, c.max_value_bytes) == (1024, 1024 * 1024)
    assert c.durability == "process" and c.conflict_resolution == "lww"


def test_every_field_is_documented() -> None:
    names = [f.name for f in dataclasses.fields(StorageConfig)]
    assert list(FIELD_DOCS) == names
    assert all(len(doc) > 20 for doc in FIELD_DOCS.values())


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        StorageConfig().gossip_fanout = 9  # type: ignore[misc]


def test_precedence_toml_then_env_then_keywords(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('node_id = "from-file"\ngossip_fanout = 4\nregion = "eu"\nmax_long_links = 8\n')
    env = {"DSM_GOSSIP_FANOUT": "5", "DSM_REGION": "us", "UNRELATED": "x"}
    c = StorageConfig.load(toml, env=env, region="ap", max_key_bytes=None)
    assert c.node_id == "from-file"  # file only
    assert c.max_long_links == 8  # file only
    assert c.gossip_fanout == 5  # env beats file
    assert c.region == "ap"  # keyword beats env
    assert c.max_key_bytes == 1024  # None keyword means "not given"


def test_env_integers_accept_underscores_and_reject_text() -> None:
    assert StorageConfig.load(env={"DSM_MAX_VALUE_BYTES": "2_000_000"}).max_value_bytes == 2_000_000
    with pytest.raises(ConfigError) as caught:
        StorageConfig.load(env={"DSM_GOSSIP_FANOUT": "three"})
    assert caught.value.field == "gossip_fanout" and caught.value.value == "three"


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("gossip_fanout", 0, "from 1 to 32"),
        ("gossip_fanout", "3", "integer"),
        ("gossip_fanout", True, "integer"),
        ("max_immediate_neighbors", 15, "even"),
        ("gossip_interval_ms", 100, "between"),
        ("durability", "sometimes", "'process' or 'fsync'"),
        ("conflict_resolution", "random", "'lww' or 'siblings'"),
        ("node_id", "has space", "characters"),
        ("region", "", "characters"),
        ("listen_addr", "nohost", "host:port"),
        ("http_addr", "h:99999", "host:port"),
        ("storage_url", "mysql://x", "sqlite"),
        ("max_value_bytes", -1, "from 0"),
        ("indirect_probes_max", 2, "from indirect_probes to 32"),
        ("indirect_probes_max", 33, "from 0 to 32"),
    ],
)
def test_invalid_values_name_field_value_and_what_is_allowed(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageConfig(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field and caught.value.value == value
    assert allowed in str(caught.value) and field in str(caught.value)


def test_unknown_settings_are_refused_everywhere(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("gossip_fanotu = 3\n")
    with pytest.raises(ConfigError, match="gossip_fanotu"):
        StorageConfig.load(toml)
    with pytest.raises(ConfigError, match="unknown"):
        StorageConfig.load(gossip_fanotu=3)
    with pytest.raises(ConfigError, match="unknown"):
        StorageConfig().replace(nope=1)


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable"):
        StorageConfig.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("node_id = \n")
    with pytest.raises(ConfigError, match="valid TOML"):
        StorageConfig.load(broken)


def test_storage_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    c = StorageConfig(data_dir=str(tmp_path / "d"))
    assert c.resolved_storage_url() == f"sqlite://{tmp_path}/d/dsm.sqlite3"
    assert StorageConfig(storage_url="memory:").resolved_storage_url() == "memory:"
    assert StorageConfig(listen_addr="10.0.0.1:7000").advertised == "10.0.0.1:7000"
    assert StorageConfig(advertise_addr="node1:7000").advertised == "node1:7000"
