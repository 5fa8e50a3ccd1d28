import pytest

from llm_lmstudio.core import settings


@pytest.mark.parametrize(
    "value, expected",
    [
        ("localhost:1234", "http://localhost:1234"),
        ("127.0.0.1", "http://127.0.0.1:1234"),
        ("http://gpu-box:4321/v1", "http://gpu-box:4321"),
        ("https://lms.example.org", "https://lms.example.org:443"),
        ("  http://[::1]:1234/  ", "http://[::1]:1234"),
    ],
)
def test_base_url_accepts_host_port_or_url(value, expected):
    assert settings.normalize_base_url(value) == expected


@pytest.mark.parametrize("value", ["ftp://host:21", "file:///etc/passwd", "ws://localhost:1234"])
def test_base_url_refuses_other_schemes(value):
    with pytest.raises(settings.SettingsError, match="only http and https"):
        settings.normalize_base_url(value)


@pytest.mark.parametrize("value", ["javascript:alert(1)", "host:port", "http://"])
def test_base_url_refuses_garbage_with_a_clear_message(value):
    with pytest.raises(settings.SettingsError, match="LMSTUDIO_BASE_URL"):
        settings.normalize_base_url(value)


def test_default_server_is_localhost_1234():
    assert settings.servers() == [settings.Server("http://localhost:1234", "lmstudio")]


def test_several_servers_get_unique_readable_prefixes(monkeypatch):
    monkeypatch.setenv("LMSTUDIO_BASE_URL", "localhost:1234, gpu-box:1234,localhost:1234")
    servers = settings.servers()
    assert [s.prefix for s in servers] == ["lmstudio", "lmstudio@gpu-box:1234"]
    assert servers[1].model_id("qwen/qwen3-4b") == "lmstudio@gpu-box:1234/qwen/qwen3-4b"


def test_token_from_llm_keys_beats_environment(monkeypatch, user_path):
    monkeypatch.setenv("LM_API_TOKEN", "from-env")
    assert settings.api_token() == "from-env"
    (user_path / "keys.json").write_text('{"lmstudio": "from-keys"}')
    assert settings.api_token() == "from-keys"


def test_timeouts_reject_nonsense(monkeypatch):
    monkeypatch.setenv("LMSTUDIO_TIMEOUT", "soon")
    with pytest.raises(settings.SettingsError, match="LMSTUDIO_TIMEOUT"):
        settings.timeouts()


def test_models_dir_honours_lmstudio_settings(tmp_path, monkeypatch):
    home = tmp_path / "lmhome"
    home.mkdir()
    monkeypatch.setenv("LMSTUDIO_HOME", str(home))
    assert settings.lmstudio_models_dir() == home / "models"
    (home / "settings.json").write_text('{"downloadsFolder": "%s"}' % (tmp_path / "elsewhere"))
    assert settings.lmstudio_models_dir() == tmp_path / "elsewhere"


def test_embed_batch_size_is_configurable_and_refuses_nonsense_naming_what_it_accepts(monkeypatch):
    assert settings.embed_batch_size() == 64
    monkeypatch.setenv("LMSTUDIO_EMBED_BATCH_SIZE", "7")
    assert settings.embed_batch_size() == 7
    for bad in ("0", "-3", "abc", "1.5"):
        monkeypatch.setenv("LMSTUDIO_EMBED_BATCH_SIZE", bad)
        with pytest.raises(settings.SettingsError, match=r"whole number of at least 1 \(default 64\)"):
            settings.embed_batch_size()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_every_timeout_error_names_the_variable_and_the_accepted_values(monkeypatch, value):
    for name, default in (("LMSTUDIO_TIMEOUT", "300"), ("LMSTUDIO_CONNECT_TIMEOUT", "2"), ("LMSTUDIO_CACHE_TTL", "30")):
        monkeypatch.setenv(name, value)
        with pytest.raises(settings.SettingsError) as caught:
            settings.check()
        message = str(caught.value)
        assert message.startswith(f"{name}={value!r}") and f"greater than 0 (default {default})" in message
        monkeypatch.delenv(name)


def test_a_server_option_is_named_as_such_not_as_the_variable():
    with pytest.raises(settings.SettingsError, match=r"^--server 'garbage://' uses the scheme 'garbage'"):
        settings.normalize_base_url("garbage://", source="--server")


def test_the_listing_digest_changes_with_the_token_and_never_contains_it(monkeypatch):
    server = settings.servers()[0]
    without = settings.listing_digest(server)
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-DIGEST01:digestPass")
    with_token = settings.listing_digest(server)
    assert without != with_token and "DIGEST01" not in with_token and "digestPass" not in with_token


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("LMSTUDIO_RESPONSE_CACHE", "soon", "use a number with s, m, h or d, like 30m or 7d"),
        ("LMSTUDIO_RESPONSE_CACHE", "-5m", "use a positive number with s, m, h or d"),
        ("LMSTUDIO_RESPONSE_CACHE_SIZE", "lots", "use a number with KB, MB or GB, like 200MB"),
        ("LMSTUDIO_RESPONSE_CACHE_SIZE", "0", "use a size greater than 0 with KB, MB or GB, like 200MB (default 100MB)"),
    ],
)
def test_response_cache_settings_errors_name_the_variable_and_what_it_accepts(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as caught:
        settings.response_cache_ttl() if name == "LMSTUDIO_RESPONSE_CACHE" else settings.response_cache_max_bytes()
    assert name in str(caught.value) and words in str(caught.value)


# NAME='value' <what is wrong>: <what it accepts>
SETTINGS_SHAPE = r"^(?P<name>[A-Z_]+)='(?P<value>[^']*)' (is|uses|has) [^:]+: (set it to|use|only) .+"


@pytest.mark.parametrize(
    "name, value, read",
    [
        ("LMSTUDIO_BASE_URL", "ftp://x", settings.servers),
        ("LMSTUDIO_TIMEOUT", "abc", settings.timeouts),
        ("LMSTUDIO_CONNECT_TIMEOUT", "-1", settings.timeouts),
        ("LMSTUDIO_DISCOVERY_BUDGET", "nan", settings.timeouts),
        ("LMSTUDIO_CACHE_TTL", "0", settings.cache_ttl),
        ("LMSTUDIO_EMBED_BATCH_SIZE", "1.5", settings.embed_batch_size),
        ("LMSTUDIO_RESPONSE_CACHE", "forever", settings.response_cache_ttl),
        ("LMSTUDIO_RESPONSE_CACHE_SIZE", "Lots", settings.response_cache_max_bytes),
        ("LMSTUDIO_MLX_PROMPT_CACHE", "2 TB", settings.mlx_prompt_cache_bytes),
        ("LMSTUDIO_MLX_MEMORY_CHECK", "maybe", settings.mlx_memory_check),
        ("LMSTUDIO_MODELS_DIR", "/nonexistent", settings.lmstudio_models_dir),
        ("LMSTUDIO_HOME", "/nonexistent", settings.lmstudio_models_dir),
        ("LLM_LMSTUDIO_DEBUG", "verbose", settings.check),
    ],
)
def test_every_unusable_value_is_refused_in_one_shape_naming_the_variable(monkeypatch, name, value, read):
    import re

    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as caught:
        read()
    match = re.match(SETTINGS_SHAPE, str(caught.value))
    assert match and (match["name"], match["value"]) == (name, value), str(caught.value)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(("or unset it", ")", "like 200MB", "like 30m or 7d"))


@pytest.mark.parametrize("value, on", [("", True), ("on", True), ("1", True), ("TRUE", True), ("off", False),
                                       ("0", False), ("no", False)])
def test_switches_take_on_and_off_and_nothing_else(monkeypatch, value, on):
    monkeypatch.setenv("LMSTUDIO_MLX_MEMORY_CHECK", value)
    assert settings.mlx_memory_check() is on
    monkeypatch.setenv("LLM_LMSTUDIO_DEBUG", value)
    assert settings.debug() is (on and value != "")  # debugging is off unless asked for


def test_a_folder_setting_that_exists_is_taken(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path))
    assert settings.lmstudio_models_dir() == tmp_path
