import tomllib
from pathlib import Path

import pytest

from relay.config import Config, defaults_as_dict, load_config
from relay.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_annotated_file_lists_every_setting_with_its_default() -> None:
    on_disk = tomllib.loads((REPO / "config" / "relais.toml").read_text(encoding="utf-8"))
    assert on_disk == defaults_as_dict()


def test_no_file_gives_defaults() -> None:
    assert load_config(None, {}) == Config()


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "relais.toml"
    path.write_text('[http]\nport = 9000\n[server]\ndomain = "a.example"\n', encoding="utf-8")
    config = load_config(
        path,
        {
            "RELAIS_HTTP_PORT": "9443",
            "RELAIS_BUS_BACKEND": "redis",
            "RELAIS_BUS_REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert config.http.port == 9443
    assert config.server.domain == "a.example"
    assert config.bus.backend == "redis"
    assert config.http.client_certificates is True
    config = load_config(path, {"RELAIS_HTTP_CLIENT_CERTIFICATES": "off"})
    assert config.http.client_certificates is False


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[http]\nport = 'x'\n", {}, "http.port: expected an integer, got 'x'"),
        ("[http]\nport = 70000\n", {}, "http.port: must be a port number"),
        ("[http]\nprot = 1\n", {}, "http.prot: unknown setting"),
        ("[htp]\nport = 1\n", {}, "htp: unknown section"),
        ("[bus]\nbackend = 'kafka'\n", {}, "bus.backend: must be one of memory, redis"),
        ("", {"RELAIS_HTTP_PORT": "eighty"}, "http.port: expected an integer, got 'eighty'"),
        ("", {"RELAIS_HTTP_PROT": "1"}, "RELAIS_HTTP_PROT: unknown setting"),
        ("[accounts]\nsession_hours = -1\n", {}, "accounts.session_hours: must not be negative"),
        ("[http\n", {}, "invalid TOML"),
        ("[bus]\nbackend = 'redis'\n", {}, "bus.redis_url: required when bus.backend is redis"),
    ],
)
def test_invalid_values_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "relais.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.toml", {})
