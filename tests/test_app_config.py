"""The app builder validates its arguments before anything is deployed."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from serve_app.app import PortraitConfigError, build_app, parse_args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"profile": "huge"}, "unknown model profile 'huge'"),
        ({"styles_dir": "/no/such/folder"}, "/no/such/folder does not exist"),
        ({"lora_cache_size": 0}, "lora_cache_size"),
        ({"max_batch_size": "many"}, "max_batch_size"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_builder_refuses_bad_args_with_a_clear_message(args, message):
    with pytest.raises(PortraitConfigError, match="invalid Portrait Studio app args") as error:
        build_app(args)
    assert message in str(error.value)


def test_builder_refuses_a_broken_style_folder(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "style.yaml").write_text("id: bad\ntitle: Bad\nprompt_template: no subject here\n")
    with pytest.raises(PortraitConfigError, match="subject"):
        build_app({"styles_dir": str(tmp_path)})


@pytest.mark.parametrize("config", ["serve.yaml", "serve.local.yaml"])
def test_shipped_configs_build(config, monkeypatch):
    monkeypatch.chdir(REPO)
    application = yaml.safe_load((REPO / "configs" / config).read_text())["applications"][0]
    assert application["import_path"] == "serve_app.app:build_app"
    assert parse_args(application["args"]).styles_dir == str(REPO / "styles")
    names = {d["name"] for d in application["deployments"]}
    assert names == {"Preprocessor", "LayoutGenerator", "BlendSampler", "FusionRanker", "Upscaler", "PortraitIngress"}
