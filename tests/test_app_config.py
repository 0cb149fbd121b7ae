"""The app builder validates its arguments before anything is deployed."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from serve_app.app import PortraitConfigError, build_app, parse_args
from serve_app.settings import PortraitAppArgs


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


def shipped_application(config: str) -> dict:
    application = yaml.safe_load((REPO / "configs" / config).read_text())["applications"][0]
    assert application["import_path"] == "serve_app.app:build_app"
    names = {d["name"] for d in application["deployments"]}
    assert names == {"Preprocessor", "LayoutGenerator", "BlendSampler", "FusionRanker", "Upscaler", "PortraitIngress"}
    return application


def test_local_config_builds(monkeypatch):
    monkeypatch.chdir(REPO)
    assert parse_args(shipped_application("serve.local.yaml")["args"]).styles_dir == str(REPO / "styles")


def test_tiny_commercial_config_builds(monkeypatch):
    monkeypatch.chdir(REPO)
    assert parse_args(shipped_application("serve.tiny-commercial.yaml")["args"]).profile == "tiny-commercial"


def test_commercial_config_differs_from_production_in_profile_and_weights_only():
    production, commercial = shipped_application("serve.yaml"), shipped_application("serve.commercial.yaml")
    assert commercial["args"] == {**production["args"], "profile": "commercial",
                                  "weights_dir": "/srv/portrait-weights-commercial"}
    assert commercial["deployments"] == production["deployments"]
    with pytest.raises(PortraitConfigError, match="portrait-styles"):  # validated: no style library here
        parse_args(commercial["args"])


def test_production_config_is_valid_and_fits_one_gpu():
    application = shipped_application("serve.yaml")
    args = PortraitAppArgs.model_validate(application["args"])
    assert (args.profile, args.dtype) == ("production", "float16")
    gpu = sum(d["ray_actor_options"]["num_gpus"] for d in application["deployments"])
    assert gpu <= 0.6  # one replica of every stage, 0.4 of the GPU left for autoscaled replicas
    with pytest.raises(PortraitConfigError, match="portrait-styles"):  # no style library on this machine
        parse_args(application["args"])
