"""The config schema: complete, strict, documented, and in step with the engine it configures."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "config" / "schema" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
SHIPPED = {
    "config.yaml": ["config.yaml"],
    "u1-8b.yaml": ["u1-8b.yaml"],
    "u1-8b.yaml + u1-8b-1k.yaml": ["u1-8b.yaml", "u1-8b-1k.yaml"],
}


def schema_keys(schema: dict, prefix: str = "", required=()):
    """(dotted key, its schema, required?) for every key, array items as key[]."""
    for name, sub in schema.get("properties", {}).items():
        key = prefix + name
        yield key, sub, name in required
        yield from schema_keys(sub, key + ".", sub.get("required", ()))
        if "properties" in sub.get("items", {}):
            yield from schema_keys(sub["items"], key + "[].", sub["items"].get("required", ()))


def objects(schema: dict, where: str = "(top)"):
    if "properties" in schema:
        yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from objects(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from objects(schema["items"], f"{where}[]")


def section_defaults(section: str) -> dict:
    return {name: sub.get("default") for name, sub in SCHEMA["properties"][section]["properties"].items()}


def filled_default(section: str, key: str) -> dict:
    """An object key's default as validation fills it: with its own keys' defaults."""
    sub = SCHEMA["properties"][section]["properties"][key]
    return {**{k: v.get("default") for k, v in sub["properties"].items()}, **sub["default"]}


def normalised(value):
    return list(value) if isinstance(value, tuple) else value


def default_of(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def test_every_key_has_a_description_and_a_default_unless_required():
    incomplete = [
        key
        for key, sub, required in schema_keys(SCHEMA)
        if "description" not in sub or not ("default" in sub or required)
    ]
    assert incomplete == []


def test_every_object_refuses_unknown_keys():
    assert [where for where, schema in objects(SCHEMA) if schema.get("additionalProperties") is not False] == []


def test_readme_documents_exactly_the_schema_keys():
    readme = (REPO / "config" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_][a-z0-9_]*(?:\.[a-z0-9_\[\]]+)+)` \|", readme, flags=re.M))
    assert documented == {key for key, _, _ in schema_keys(SCHEMA) if "." in key}


def test_train_keys_and_defaults_match_the_engine():
    import u1lib.train.settings as settings

    engine = {
        f.name: normalised(default_of(f))
        for f in dataclasses.fields(settings.TrainSettings)
        if f.name not in ("device", "extra")
    }  # device: runtime, chosen by the job
    schema = section_defaults("train")
    schema["upstream_lora"] = filled_default("train", "upstream_lora")  # the engine takes the filled shape
    assert schema == engine


def test_sample_and_cache_keys_and_defaults_match_the_engine():
    import u1lib.cache as cache
    import u1lib.sample_settings as sample

    engine = {
        f.name: normalised(default_of(f))
        for f in dataclasses.fields(sample.SampleSettings)
        if f.name not in ("device", "upstream_lora")
    }  # upstream_lora comes from the train section
    schema = section_defaults("sample")
    del schema["prompt_set"]  # names the output folder, not a sampler setting
    assert schema == engine
    parameters = inspect.signature(cache.build_cache).parameters.values()
    engine = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "device"}
    prompt = {"template", "trigger", "use_think"}  # the prompt section
    assert {k: v for k, v in engine.items() if k not in prompt} == section_defaults("cache")
    assert {k: v for k, v in engine.items() if k in prompt} == section_defaults("prompt")


def test_bench_measure_fields_match_the_engine():
    from u1lib.bench import measure as bench

    items = SCHEMA["properties"]["bench"]["properties"]["measures"]["items"]["properties"]
    engine = {f.name: f.default for f in dataclasses.fields(bench.Measure) if f.name != "measure"}
    assert {name: sub["default"] for name, sub in items.items() if name != "measure"} == engine
    assert items["measure"]["enum"] == list(bench.MEASURES)


def test_choices_match_the_engine():
    import u1lib.model.sampling as sampling
    import u1lib.train.objectives as objectives
    import u1lib.train.timesteps as timesteps
    from u1lib.data.buckets import BUCKET_KINDS
    from u1lib.data.prompts import TEMPLATES

    props = {section: body["properties"] for section, body in SCHEMA["properties"].items()}
    assert props["train"]["loss_type"]["enum"] == list(objectives.LOSS_TYPES)
    assert props["train"]["t_dist"]["enum"] == list(timesteps.T_DISTS)
    assert props["sample"]["cfg_norm"]["enum"] == list(sampling.CFG_NORMS)
    assert props["prompt"]["template"]["enum"] == list(TEMPLATES)
    assert props["dataset"]["buckets"]["properties"]["kind"]["enum"] == list(BUCKET_KINDS)


@pytest.mark.parametrize("files", SHIPPED.values(), ids=SHIPPED.keys())
def test_shipped_configs_build_the_engine_settings(files):
    import u1lib.sample_settings as sample
    import u1lib.train.settings as settings

    config = {}
    for name in files:  # later files are merged over earlier ones, as Snakemake does
        merge(config, yaml.safe_load((REPO / "config" / name).read_text()))
    validate(config, str(SCHEMA_PATH))
    settings.TrainSettings.from_dict(config["train"])
    sample.SampleSettings.from_dict({k: v for k, v in config["sample"].items() if k != "prompt_set"})


def merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
