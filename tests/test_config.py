"""StorageConfig: the specification's defaults, loading precedence (TOML < env < keywords), validation, the
core's knobs under one name, bounds declared once, profiles and modes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsm import ConfigError, StorageConfig
from dsm.config import (
    BOUNDS,
    CHOICES,
    FIELD_DOCS,
    PROFILES,
    ConflictResolution,
    ConsistencyLevel,
    Durability,
    HttpTls,
    Profile,
    StaleReplica,
    markdown_reference,
)


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


# ------------------------------------------------------------------ the core's knobs, one name each

#: The protocol knobs the core read and the config did not offer before (defaults of PeerSettings).
CORE_KNOBS = {
    "join_timeout_ms": 2000,
    "gossip_adaptive": True,
    "gossip_retain_mult": 3,
    "direct_updates": True,
    "lazy_fanout": 3,
    "graft_timeout_ms": 250,
    "graft_min_ms": 20,
    "max_recent": 8192,
    "max_digest_ids": 4096,
    "seen_max": 65536,
    "anti_entropy_max_bytes": 1 << 20,
}


def test_every_core_knob_is_a_setting_of_the_same_name_and_default() -> None:
    from dsm.core.peer import PeerSettings

    config = StorageConfig()
    for f in dataclasses.fields(PeerSettings):
        assert f.name in FIELD_DOCS, f"{f.name}: a core knob the config does not offer"
        if f.name != "max_long_links_in":  # the config's 0 means "2 x max_long_links" (32)
            assert getattr(config, f.name) == f.default, f.name
    assert PeerSettings.from_config(config) == PeerSettings()
    assert {name: getattr(config, name) for name in CORE_KNOBS} == CORE_KNOBS
    changed = {"direct_updates": False, "gossip_adaptive": False, "lazy_fanout": 0, "seen_max": 9000}
    settings = PeerSettings.from_config(
        StorageConfig.load(env={"DSM_" + k.upper(): str(v) for k, v in changed.items()})
    )
    assert {name: getattr(settings, name) for name in changed} == changed


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("join_timeout_ms", 99, "from 100 to 600000"),
        ("gossip_adaptive", 1, "true or false"),
        ("direct_updates", "no", "true or false"),
        ("gossip_retain_mult", 0, "from 1 to 100"),
        ("lazy_fanout", 33, "from 0 to 32"),
        ("graft_timeout_ms", 0, "from 1 to 60000"),
        ("graft_min_ms", -1, "from 0 to 60000"),
        ("graft_min_ms", 251, "graft_timeout_ms (250)"),
        ("max_recent", 0, "from 1 to"),
        ("max_digest_ids", 65537, "from 1 to 65536"),
        ("seen_max", 100, "from max_recent (8192)"),
        ("anti_entropy_max_bytes", 2 * 1024 * 1024 + 1, "from 1024 to 2097152"),
        ("anti_entropy_max_bytes", 1.5, "integer"),
    ],
)
def test_new_knobs_are_validated(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageConfig(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field and caught.value.value == value and allowed in str(caught.value)


# ------------------------------------------------------------------ bounds, declared once


def test_every_integer_has_one_declared_range_that_validation_and_documents_use() -> None:
    ints = [f.name for f in dataclasses.fields(StorageConfig) if f.type in ("int", int)]
    assert sorted(ints) == sorted(BOUNDS)
    for name, bound in BOUNDS.items():
        for bad in (bound.low - 1, bound.high + 1):
            with pytest.raises(ConfigError) as caught:
                StorageConfig(**{name: bad})  # type: ignore[arg-type]
            assert caught.value.field == name and f"from {bound.low} to {bound.high}" in str(caught.value)
        assert " Allowed: " in FIELD_DOCS[name]
        # The hand-written text does not repeat the range (it is generated from the bound).
        doc = next(f for f in dataclasses.fields(StorageConfig) if f.name == name).metadata["doc"]
        assert f"{bound.low}-{bound.high}" not in doc and f"({bound.low} - " not in doc, name


def test_docs_configuration_holds_the_generated_reference() -> None:
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert markdown_reference() in page, "regenerate with `dsm config --markdown`"
    for name in FIELD_DOCS:
        assert f"| `{name}` |" in page


# ------------------------------------------------------------------ profiles


def test_lan_is_the_defaults_and_each_profile_changes_only_what_it_lists() -> None:
    default = StorageConfig()
    assert StorageConfig(profile="lan") == default and default.profile is Profile.LAN
    assert PROFILES[Profile.LAN] == {}
    for profile in Profile:
        config = StorageConfig(profile=profile.value)  # type: ignore[arg-type]
        assert config.profile is profile
        for f in dataclasses.fields(StorageConfig):
            if f.name == "profile":
                continue
            if f.name in PROFILES[profile]:
                assert getattr(config, f.name) == PROFILES[profile][f.name] != getattr(default, f.name), f.name
            else:
                assert getattr(config, f.name) == getattr(default, f.name), f.name


def test_wan_follows_memberlist_and_sim_is_the_simulators_fault_histories() -> None:
    from dsm.core.peer import PeerSettings
    from dsm.sim.workload import WorkloadParams

    wan = StorageConfig(profile="wan")
    assert (wan.probe_interval_ms, wan.probe_timeout_ms, wan.suspicion_mult, wan.gossip_fanout) == (5000, 3000, 6, 4)
    # The history workload's protocol settings are the sim profile's, field for field.
    assert PeerSettings.from_config(StorageConfig(profile="sim")) == WorkloadParams(seed=1).settings


def test_an_explicit_setting_beats_the_profile_from_every_source(tmp_path: Path) -> None:
    both = StorageConfig(profile="wan", gossip_fanout=3)  # explicitly the lan value
    assert (both.gossip_fanout, both.probe_interval_ms) == (3, 5000)
    with pytest.raises(ConfigError, match="probe_timeout_ms"):  # the profile's values are validated too
        StorageConfig(profile="wan", probe_interval_ms=1000)
    toml = tmp_path / "node.toml"
    toml.write_text('profile = "wan"\nprobe_timeout_ms = 400\n')
    from_file = StorageConfig.load(toml, env={})
    assert (from_file.profile, from_file.probe_interval_ms, from_file.probe_timeout_ms) == ("wan", 5000, 400)
    # The strongest source names the profile; the file's explicit setting still wins over it.
    sim = StorageConfig.load(toml, env={"DSM_GOSSIP_FANOUT": "5"}, profile="sim")
    assert (sim.profile, sim.probe_interval_ms, sim.probe_timeout_ms, sim.gossip_fanout) == ("sim", 500, 400, 5)
    assert StorageConfig.load(env={"DSM_PROFILE": "wan"}).probe_interval_ms == 5000
    # replace() keeps every value it does not name, and refuses another profile.
    assert wan_replaced(from_file) == from_file.probe_timeout_ms
    with pytest.raises(ConfigError, match="profile"):
        from_file.replace(profile="lan")
    with pytest.raises(ConfigError) as caught:
        StorageConfig(profile="metro")  # type: ignore[arg-type]
    assert caught.value.field == "profile" and "'lan', 'wan' or 'sim'" in str(caught.value)


def wan_replaced(config: StorageConfig) -> int:
    changed = config.replace(gossip_fanout=6)
    assert changed.gossip_fanout == 6 and changed.probe_interval_ms == config.probe_interval_ms
    return changed.probe_timeout_ms


def test_dsm_config_shows_the_profile_and_the_values_it_set() -> None:
    env = {**os.environ, "COLUMNS": "300", "DSM_PROBE_TIMEOUT_MS": "2000"}
    result = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "config", "--profile", "wan"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines() if "│" in line
    }
    assert rows["profile"] == "'wan'" and rows["probe_interval_ms"] == "5000 (wan)"
    assert rows["probe_timeout_ms"] == "2000" and rows["gossip_interval_ms"] == "5000"


# ------------------------------------------------------------------ modes


def test_modes_are_str_enums_named_as_before() -> None:
    config = StorageConfig(durability="fsync", conflict_resolution="siblings", stale_replica="discard")  # type: ignore[arg-type]
    assert config.durability is Durability.FSYNC and config.durability == "fsync"
    assert config.conflict_resolution is ConflictResolution.SIBLINGS and config.stale_replica != "refuse"
    assert config.http_tls is HttpTls.AUTO and config.write_consistency is ConsistencyLevel.LOCAL
    assert repr(config.durability) == "'fsync'" and f"{config.durability}" == "fsync"
    assert json.dumps({"d": config.durability}) == '{"d": "fsync"}'
    assert config == StorageConfig(
        durability=Durability.FSYNC, conflict_resolution=ConflictResolution.SIBLINGS, stale_replica=StaleReplica.DISCARD
    )
    regional = StorageConfig.load(env={"DSM_REGIONS": '{"eu": {"write_consistency": "quorum"}}', "DSM_HTTP_TLS": "off"})
    assert regional.http_tls is HttpTls.OFF
    assert regional.levels("eu") == ("quorum", "local") and regional.levels("eu")[0] is ConsistencyLevel.QUORUM


def test_mode_names_agree_with_the_core() -> None:
    from dsm.core.consistency import LEVEL_NAMES
    from dsm.core.versions import Resolution

    assert tuple(ConsistencyLevel) == LEVEL_NAMES
    assert {r.value for r in Resolution} == set(ConflictResolution)
    assert set(CHOICES) >= {"durability", "conflict_resolution", "stale_replica", "http_tls", "profile"}


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("stale_replica", "keep", "'refuse' or 'discard'"),
        ("http_tls", "yes", "'auto', 'on' or 'off'"),
        ("write_consistency", "most", "'local', 'region_quorum', 'quorum', 'each_region_quorum' or 'all'"),
        ("durability", 1, "'process' or 'fsync'"),
    ],
)
def test_invalid_modes_name_the_choices(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageConfig(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field and caught.value.value == value and allowed in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        StorageConfig(regions={"eu": {"read_consistency": "most"}})
    assert caught.value.field == "regions.eu.read_consistency"
