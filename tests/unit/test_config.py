from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "example.toml", env={})
    assert cfg.tiers["standard"].session_allowance == 4_000_000_000
    assert cfg.tiers["premium"].weekly_allowance == 200_000_000_000
    assert cfg.policy.reservation == "estimate"


def test_environment_overrides_the_file() -> None:
    env = {
        "REDIS_URL": "redis://r:1/2",
        "UPSTREAM_URL": "http://up:9/",
        "UPSTREAM_API_KEY": "k",
        "OPERATOR_TOKEN": "op",
        "SERVICE_TOKEN": "svc",
        "DATABASE_URL": "postgresql://d/b",
    }
    cfg = load_config(ROOT / "config" / "example.toml", env=env)
    assert cfg.redis.url == "redis://r:1/2"
    assert cfg.upstream.url == "http://up:9"
    assert cfg.upstream.api_key == "k"
    assert (cfg.operator_token, cfg.service_token) == ("op", "svc")
    assert cfg.ledger.database_url == "postgresql://d/b"


def test_api_key_env_names_the_variable() -> None:
    cfg = parse_config({"upstream": {"api_key_env": "MY_KEY"}}, "<t>", {"MY_KEY": "secret"})
    assert cfg.upstream.api_key == "secret"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"policy": {"reservation": "lax"}}, "cfg.toml: policy.reservation must be one of"),
        ({"server": {"port": "80"}}, "cfg.toml: server.port must be an integer"),
        ({"server": {"max_body_bytes": -1}}, "server.max_body_bytes must be greater than 0"),
        ({"redis": {"cluster": "yes"}}, "redis.cluster must be true or false"),
        ({"redis": {"colour": 1}}, "redis.colour is not a known field"),
        (
            {"tiers": {"gold": {"session_allowance": "x", "weekly_allowance": "1"}}},
            "tiers.gold.session_allowance must be a decimal amount",
        ),
        (
            {"tiers": {"gold": {"weekly_allowance": "1"}}},
            "tiers.gold.session_allowance is required",
        ),
        ({"payments": {"provider": "webhook"}}, "payments.webhook_url must be an http"),
        ({"upstream": {"url": "https://"}}, "upstream.url must be an http:// or https:// URL"),
        ({"upstream": {"url": "ftp://api"}}, "upstream.url must be an http:// or https:// URL"),
        ({"upstream": {"url": "http://api:port"}}, "upstream.url has an invalid port"),
        ({"nonsense": {}}, "nonsense is not a known section"),
        ({"policy": {"reservation_ttl_s": 10}}, "policy.reservation_ttl_s must be longer than"),
        ({"pricing": {"unknown_model": "gpt"}}, "pricing.unknown_model must name a family"),
        (
            {"policy": {"op_retention_s": 604800}},
            "policy.op_retention_s was replaced by replay_window_s",
        ),
        ({"policy": {"replay_window_s": 0}}, "policy.replay_window_s must be greater than 0"),
        ({"policy": {"journal_in_flight": "no"}}, "policy.journal_in_flight must be"),
    ],
)
def test_errors_name_the_field(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(doc, "cfg.toml", {})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
