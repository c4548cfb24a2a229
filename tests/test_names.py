"""User-chosen names are checked when the config loads, and a run is looked up by its name's key, never by putting
the name into an MLflow filter string."""

import json
from types import SimpleNamespace

import pytest

from pbp.config import ConfigError, load_config
from pbp.errors import UserError
from pbp.names import InvalidNameError, check_name, name_key
from pbp.train.config import PretrainConfig
from pbp.train.tracking import RUN_KEY_TAG, RUN_NAME_TAG, find_run

INJECTION = "base-run' AND attributes.status != 'x"
BAD_NAMES = [INJECTION, "o'brien", "..", ".", ".hidden", "a/b", "", "x" * 200, "two words", " lead", "tab\tname",
             "new\nline", "trailing\n", "back`tick", "naïve", "a\\b", "-dash-first"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_run_names_fail_when_the_config_loads_naming_run_name(name):
    with pytest.raises(ConfigError, match="run_name") as e:
        load_config(PretrainConfig, None, [f"run_name={json.dumps(name)}"])  # JSON: a YAML string, escapes kept
    assert repr(name) in str(e.value)
    assert "\n" not in str(e.value).replace(repr(name), "")  # one line for the CLI


@pytest.mark.parametrize("name", [INJECTION, "..", "a/b"])
def test_bad_experiment_names_fail_naming_the_field(name):
    with pytest.raises(ConfigError, match="tracking.experiment"):
        load_config(PretrainConfig, None, [f"tracking.experiment={json.dumps(name)}"])


@pytest.mark.parametrize("name", ["tiny-1.0_a", "a", "0", "x" * 128, "pbp-pretrain", "A.b_c-D"])
def test_good_names_load(name):
    cfg = load_config(PretrainConfig, None, [f"run_name={json.dumps(name)}", f"tracking.experiment={json.dumps(name)}"])
    assert cfg.run_name == name and cfg.tracking.experiment == name


def test_invalid_name_error_is_a_user_error_naming_field_value_and_allowed_characters():
    with pytest.raises(InvalidNameError) as e:
        check_name("o'brien", "model name")
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert str(e.value).startswith('model name: "o\'brien"') and "A-Z a-z 0-9 . _ -" in str(e.value)
    assert check_name("ok-1", "model name") == "ok-1"


def test_name_key_is_hex_and_distinct():
    assert len(name_key(INJECTION)) == 64 and set(name_key(INJECTION)) <= set("0123456789abcdef")
    assert name_key("a") != name_key("b") and name_key("a") == name_key("a")


class _RecordingClient:
    """Records the search_runs arguments and answers with the given runs (newest first)."""

    def __init__(self, runs):
        self.runs, self.calls = runs, []

    def search_runs(self, experiment_ids, filter_string="", **kwargs):
        self.calls.append((experiment_ids, filter_string, kwargs))
        return self.runs


def _run(run_id, name):
    tags = {RUN_NAME_TAG: name, RUN_KEY_TAG: name_key(name)}
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


@pytest.mark.parametrize("name", [INJECTION, "o'brien", "tiny-1.0_a"])
def test_find_run_filters_by_the_key_only(name):
    client = _RecordingClient([_run("r1", name)])
    assert find_run(client, "7", name) == "r1"
    [(exp_ids, filter_string, _)] = client.calls
    assert exp_ids == ["7"]
    assert filter_string == f"tags.`{RUN_KEY_TAG}` = '{name_key(name)}'"
    # Nothing of the name reaches the filter: what is left after the tag and the hex key is the fixed syntax.
    rest = filter_string.replace(RUN_KEY_TAG, "").replace(name_key(name), "")
    assert rest == "tags.`` = ''"


def test_find_run_returns_only_an_exact_name_match():
    # Whatever the server answers, a run whose name tag differs is not taken (newest first: the impostor is first).
    client = _RecordingClient([_run("impostor", "base-run"), _run("mine", "base-run2")])
    assert find_run(client, "7", "base-run2") == "mine"
    assert find_run(_RecordingClient([_run("other", "base-run")]), "7", "base-run2") is None
    assert find_run(_RecordingClient([]), "7", "base-run") is None


def test_log_config_never_replaces_the_run_identity_tags():
    """A campaign passed its base config's `pbp.run_name` to every trial, which renamed the trials' runs so none
    could be found again; the tracker owns the identity tags."""
    from pbp.train.tracking import RUN_KEY_TAG, RUN_NAME_TAG, Tracker

    class Recorder:
        def __init__(self):
            self.tags = {}

        def set_tag(self, run_id, key, value):
            self.tags[key] = value

    t = Tracker("exp", "trial-a", None, enabled=False)
    t.enabled, t.client, t.run_id, t.new = True, Recorder(), "rid", False
    t.log_config(None, {RUN_NAME_TAG: "base", RUN_KEY_TAG: "x", "pbp.campaign": "c"})
    assert t.client.tags == {"pbp.campaign": "c"}
