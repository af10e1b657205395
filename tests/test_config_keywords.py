"""A misspelt `StorageConfig(...)` keyword: a `ConfigError` that names it and suggests the setting meant,
as from a file, the environment or `replace` (not Python's bare `TypeError`)."""

from __future__ import annotations

import pytest

from dsm import StorageConfig
from dsm.errors import ConfigError


def test_a_misspelt_keyword_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        StorageConfig(gossip_intervall_ms=500)
    error = caught.value
    assert error.field == "gossip_intervall_ms" and error.value == 500
    assert "did you mean 'gossip_interval_ms'" in str(error)


def test_a_misspelt_keyword_with_a_profile_and_valid_settings_beside_it() -> None:
    with pytest.raises(ConfigError, match="did you mean 'probe_interval_ms'"):
        StorageConfig(profile="wan", node_id="n1", prob_interval_ms=2000)


def test_a_name_like_no_setting_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown setting; known: node_id, "):
        StorageConfig(zzzz=1)


def test_a_misspelt_secret_does_not_show_its_value() -> None:
    with pytest.raises(ConfigError, match="did you mean 'cluster_secret'") as caught:
        StorageConfig(cluster_secert="hunter2-hunter2")
    assert "hunter2" not in str(caught.value) and caught.value.value == "<hidden>"


def test_valid_keywords_still_build_and_validate() -> None:
    assert StorageConfig(gossip_interval_ms=500).gossip_interval_ms == 500
    with pytest.raises(ConfigError, match="gossip_interval_ms"):
        StorageConfig(gossip_interval_ms=-1)
