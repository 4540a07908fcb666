"""Policy profiles as files: the shipped ones load, a resolved profile reads back the same, and
every fault in a hostile file is reported with the line it is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.codes import DEFAULT_SHAPES
from gateway.config import ConfigError, Settings
from gateway.policy import RULE_BY_REASON, Reason
from gateway.profiles.cli import render
from gateway.profiles.loading import SHIPPED, ProfileError, load, parse, shipped_text
from gateway.records import Status
from gateway.rules import RulesConfig


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_under_its_own_name(name: str) -> None:
    profile = load(name)
    assert profile.name == name and profile.title and profile.origin == "shipped"
    assert set(profile.specs) == set(RULE_BY_REASON)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_resolved_profile_reads_back_as_the_same_profile(name: str) -> None:
    profile = load(name)
    again = parse(render(profile), "rendered")
    assert again.specs == profile.specs
    assert again.rules_config(DEFAULT_SHAPES) == profile.rules_config(DEFAULT_SHAPES)


def test_the_default_profile_is_todays_behaviour() -> None:
    config = load("default").rules_config(DEFAULT_SHAPES)
    assert config == RulesConfig()
    assert config.specs == RULE_BY_REASON and config.plain_staff


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "default"])
def test_every_knob_of_a_regional_profile_is_commented(name: str) -> None:
    """Each knob rests on an article: a comment in the lines above it (or above its table)."""
    lines = shipped_text(name).splitlines()
    for index, raw in enumerate(lines):
        if "=" not in raw or raw.lstrip().startswith(("#", "[", '"')) or raw.startswith(" "):
            continue
        if raw.split("=")[0].strip() in {"name", "title", "article", "detail", "emergency_article"}:
            continue
        above = lines[max(0, index - 12) : index]
        assert any(line.lstrip().startswith("#") for line in above), f"{name}.toml:{index + 1}: {raw}"


def test_profile_knobs_resolve_into_the_rules_configuration() -> None:
    """000 §14 (restoration, bans), §9(5)/§11 (pharmacies); 001 §四 (sites); 004 §60, 第二十二条."""
    zhoushan = load("zhoushan").rules_config(DEFAULT_SHAPES)
    assert zhoushan.suspension_lifts_on_restoration and zhoushan.enforce_bans
    assert zhoushan.staff_ban_years == {Status.TERMINATED: 1, Status.CANCELLED: 5}
    assert zhoushan.external_prescription_prefix == "P"
    jining = load("jining").rules_config(DEFAULT_SHAPES)
    assert jining.cross_site == {Status.SUSPENDED, Status.TERMINATED, Status.CANCELLED}
    nantong = load("nantong").rules_config(DEFAULT_SHAPES)
    assert nantong.department_code_required and nantong.emergency_med_types == {"13"}
    foshan = load("foshan").rules_config(DEFAULT_SHAPES)
    assert foshan.specs[Reason.INSTITUTION_SUSPENDED].emergency_article is None
    assert foshan.specs[Reason.INSTITUTION_UNREGISTERED].emergency_article is not None


BAD = [
    ("unknown top-level key", 'name = "x"\ncolour = "blue"\n', 2, "colour: unknown key"),
    ("unknown table key", 'name = "x"\n[sites]\nlock = "national"\nsite = 1\n', 4, "sites.site: unknown key"),
    ("bad scope", 'name = "x"\n\n[sites]\nsuspension = "everywhere"\n', 4, "expected one of 'national'"),
    ("bad lifting", 'name = "x"\n[suspension]\nlifts = "never"\n', 3, "suspension.lifts"),
    ("bool as string", 'name = "x"\n[department]\ncode_required = "yes"\n', 3, "expected true or false"),
    ("negative years", 'name = "x"\n[bans]\nstaff_terminated_years = -1\n', 3, "whole number of years"),
    ("years as bool", 'name = "x"\n[bans]\nstaff_cancelled_years = true\n', 3, "whole number of years"),
    ("unknown reason in overrides", 'name = "x"\n[emergency]\noverrides = ["STAFF_ASLEEP"]\n', 3,
     "unknown reason 'STAFF_ASLEEP'"),
    ("uncoded item overridden", 'name = "x"\n[emergency]\noverrides = ["ITEM_CODE_MISSING"]\n', 3,
     "第六十条"),
    ("med types not a list", 'name = "x"\n[emergency]\nmed_types = "13"\n', 3, "医疗类别"),
    ("unknown reason table", 'name = "x"\n[reasons.STAFF_ASLEEP]\narticle = "a"\n', 2, "reasons.STAFF_ASLEEP"),
    ("unknown reason key", 'name = "x"\n[reasons.STAFF_LOCKED]\nwording = "a"\n', 3, "wording: unknown key"),
    ("bad placeholder", 'name = "x"\n[reasons.STAFF_LOCKED]\n\ndetail = "{who} 封锁"\n', 4,
     "unknown placeholder {who}"),
    ("broken template", 'name = "x"\n[reasons.STAFF_LOCKED]\ndetail = "{code 封锁"\n', 3, "not a valid template"),
    ("empty article", 'name = "x"\n[reasons.STAFF_LOCKED]\narticle = ""\n', 3, "non-empty string"),
    ("pharmacy prefix", 'name = "x"\n[external_prescriptions]\npharmacy_prefix = 1\n', 3, "capital letters"),
    ("quoted key", 'name = "x"\n[sites]\n"lock" = "somewhere"\n', 3, "sites.lock"),
    ("table not a table", 'name = "x"\nsites = 3\n', 2, "sites: expected a table"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "message"), [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_a_bad_key_or_value_is_an_error_naming_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse(text, "region.toml")
    assert any(e.startswith(f"region.toml:{line}: ") and message in e for e in caught.value.errors), (
        caught.value.errors
    )


def test_every_fault_of_a_file_is_reported_at_once() -> None:
    text = 'name = "x"\n[sites]\nlock = 1\nwhat = 2\n[bans]\nenforce = "no"\n'
    with pytest.raises(ProfileError) as caught:
        parse(text, "p.toml")
    assert [e.split(":")[1] for e in caught.value.errors] == ["3", "4", "6"]  # top to bottom


def test_a_syntax_error_names_its_line() -> None:
    with pytest.raises(ProfileError, match=r"at line 3"):
        parse('name = "x"\n[sites]\nlock = \n', "p.toml")


def test_a_profile_must_name_itself() -> None:
    with pytest.raises(ProfileError, match="name: missing"):
        parse("[sites]\n", "p.toml")


def test_an_unknown_name_or_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="neither a shipped profile"):
        load("atlantis")
    with pytest.raises(ProfileError, match="cannot read"):
        load(str(tmp_path / "absent.toml"))


def test_a_profile_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "county.toml"
    path.write_text(
        'name = "county"\n[reasons.STAFF_LOCKED]\narticle = "某县医保办法 第三条"\n', encoding="utf-8"
    )
    profile = load(str(path))
    assert profile.origin == str(path)
    assert profile.specs[Reason.STAFF_LOCKED].article == "某县医保办法 第三条"
    assert profile.specs[Reason.STAFF_LOCKED].detail == RULE_BY_REASON[Reason.STAFF_LOCKED].detail
    assert profile.specs[Reason.STAFF_SUSPENDED] == RULE_BY_REASON[Reason.STAFF_SUSPENDED]


def test_sgw_policy_profile_selects_the_profile_and_a_bad_one_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings.from_env({"SGW_POLICY_PROFILE": "nantong"})
    assert settings.profile.name == "nantong" and settings.rules.department_code_required
    assert Settings.from_env({}).profile.name == "default"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[sites]\nlock = "moon"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"SGW_POLICY_PROFILE=.*bad\.toml:3: sites\.lock"):
        Settings.from_env({"SGW_POLICY_PROFILE": str(bad)})


def test_explicit_environment_settings_still_win_over_the_profile() -> None:
    """SGW_EMERGENCY_MED_TYPES replaces the list; SGW_CANCELLATION_SCOPE=institution narrows."""
    settings = Settings.from_env(
        {
            "SGW_POLICY_PROFILE": "zhoushan",
            "SGW_EMERGENCY_MED_TYPES": "13,9901",
            "SGW_CANCELLATION_SCOPE": "institution",
        }
    )
    assert settings.rules.emergency_med_types == {"13", "9901"}
    assert not settings.rules.national_cancellation
