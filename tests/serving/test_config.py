"""config.properties is secure by default, and serving.server fills in the settings."""

from __future__ import annotations

import re
from pathlib import Path

from serving.client import MAX_REQUEST_BYTES
from serving.server import CONFIG_PATH, read_properties, render_config, write_config
from serving.settings import load_settings

TWO_MIB = 2 * 1024 * 1024


def test_every_listener_is_on_loopback() -> None:
    properties = read_properties(CONFIG_PATH)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert properties[key].startswith("http://127.0.0.1:"), key
    assert properties["grpc_inference_address"] == "127.0.0.1"
    assert properties["grpc_management_address"] == "127.0.0.1"


def test_security_and_metrics_settings() -> None:
    properties = read_properties(CONFIG_PATH)
    assert properties["disable_token_authorization"] == "false"
    assert properties["enable_model_api"] == "false"
    assert properties["enable_envvars_config"] == "false"
    assert "install_py_dep_per_model" not in properties
    assert properties["metrics_mode"] == "prometheus"
    assert properties["metrics_config"] == "handler/metrics.yaml"
    # Above the handler's own 2 MiB image limit (and its base64 form), so the handler decides.
    assert TWO_MIB * 4 // 3 < int(properties["max_request_size"]) < 2 * TWO_MIB
    assert int(properties["max_request_size"]) == MAX_REQUEST_BYTES  # the client's own check
    assert properties["load_models"] == "mnist=mnist.mar"


def test_rendered_config_takes_addresses_and_store_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TS_INFERENCE_URL": "http://127.0.0.1:18080",
            "TS_MANAGEMENT_URL": "http://127.0.0.1:18081",
            "TS_METRICS_URL": "http://127.0.0.1:18082",
            "TS_GRPC_TARGET": "127.0.0.1:17070",
            "TS_GRPC_MANAGEMENT_TARGET": "127.0.0.1:17071",
            "MODEL_STORE": str(tmp_path / "my store"),
            "MODEL_NAME": "digits",
        },
        env_file=tmp_path / "no.env",
    )
    properties = render_config(settings, overrides={"job_queue_size": "7"})
    assert properties["inference_address"] == "http://127.0.0.1:18080"
    assert properties["metrics_address"] == "http://127.0.0.1:18082"
    assert properties["grpc_inference_port"] == "17070"
    assert properties["grpc_management_port"] == "17071"
    assert properties["model_store"] == str(tmp_path / "my store")
    assert properties["load_models"] == "digits=digits.mar"
    assert properties["job_queue_size"] == "7"
    assert Path(properties["metrics_config"]).is_absolute()
    allowed = re.compile(properties["allowed_urls"])
    assert allowed.fullmatch(f"file://{tmp_path}/my store/digits.mar")
    assert not allowed.fullmatch(f"file://{tmp_path}/elsewhere/digits.mar")
    assert not allowed.fullmatch("https://example.com/digits.mar")
    written = write_config(tmp_path / "ts.properties", settings).read_text()
    assert "\\\\ " in written  # Java reads a single backslash as an escape
