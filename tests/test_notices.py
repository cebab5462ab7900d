"""Notice files are data: validated, versioned by what the person is shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.notices import NoticeError, load_notices, parse_notice

NOTICES = Path(__file__).resolve().parent.parent / "notices"


def copy_notices(tmp_path: Path) -> Path:
    target = tmp_path / "notices"
    shutil.copytree(NOTICES, target)
    return target


def test_both_controllers_load_with_their_rules():
    notices = load_notices(NOTICES, {})
    assert notices["munkeby"].opt_out_rule == "unsubscribe"
    assert notices["munkeby"].provider["kind"] == "mailchimp"
    assert notices["mysoft"].opt_out_rule == "delete"
    assert notices["mysoft"].provider["kind"] == "apsis"
    assert notices["mysoft"].fields == ("email",)
    assert len(notices["munkeby"].version) == 64


def test_changing_the_shown_text_makes_a_new_version(tmp_path):
    directory = copy_notices(tmp_path)
    before = load_notices(directory, {})["munkeby"].version
    path = directory / "munkeby.toml"
    path.write_text(path.read_text().replace("info@munkeby.se. Du kan", "info@munkeby.se.  Du kan"))
    assert load_notices(directory, {})["munkeby"].version != before


def test_provider_ids_from_the_environment_do_not_change_the_version():
    plain = load_notices(NOTICES, {})["munkeby"]
    overridden = load_notices(NOTICES, {"MUNKEBY_LIST_ID": "abc123"})["munkeby"]
    assert overridden.provider["list_id"] == "abc123"
    assert overridden.version == plain.version


def test_a_third_controller_is_just_a_new_file(tmp_path):
    directory = copy_notices(tmp_path)
    text = (directory / "mysoft.toml").read_text().replace('slug = "mysoft"', 'slug = "acme"')
    (directory / "acme.toml").write_text(text)
    assert set(load_notices(directory, {})) == {"munkeby", "mysoft", "acme"}


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('rule = "delete"', 'rule = "forget"', "opt_out.rule"),
        ('fields = ["email"]', 'fields = ["name"]', "collection.fields"),
        ('topic = "mysoft-newsletter"', 'topic = ""', "provider.topic"),
        ("unconfirmed_days = 30", "unconfirmed_days = -1", "retention"),
        ('slug = "mysoft"', 'slug = "other"', "file name"),
        ('"legitimate_interest", "consent"]', '"legitimate_interest", "contract"]', "collection.import_lawful_bases"),
        ('import_lawful_bases = ["legitimate_interest", "consent"]', "import_lawful_bases = []", "import_lawful_bases"),
        ('"legitimate_interest", "consent"]', '"consent", "consent"]', "collection.import_lawful_bases"),
        ('"legitimate_interest", "consent"]', '"consent"]', "import_lawful_basis must be one of"),
    ],
)
def test_malformed_notice_is_refused_with_the_key_named(tmp_path, old, new, message):
    directory = copy_notices(tmp_path)
    path = directory / "mysoft.toml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(NoticeError, match=message):
        load_notices(directory, {})


def test_optional_provider_ids_come_from_the_file_or_the_environment(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace("# name_attribute = \"\"", 'name_attribute = "attr-name"'), encoding="utf-8")
    notice = parse_notice(path, {"MYSOFT_EMAIL_ATTRIBUTE": "attr-email"})
    assert notice.provider["name_attribute"] == "attr-name"
    assert notice.provider["email_attribute"] == "attr-email"
    assert "email_attribute" not in parse_notice(NOTICES / "mysoft.toml", {}).provider
    path.write_text(source.replace("# name_attribute = \"\"", "name_attribute = 7"), encoding="utf-8")
    with pytest.raises(NoticeError, match=r"provider\.name_attribute must be a non-empty string"):
        parse_notice(path, {})


def test_each_notice_names_the_bases_an_import_may_use():
    notices = load_notices(NOTICES, {})
    assert notices["munkeby"].import_lawful_bases == ("consent",)
    assert notices["mysoft"].import_lawful_bases == ("legitimate_interest", "consent")
    assert notices["mysoft"].import_lawful_basis == "legitimate_interest"


def test_without_the_list_an_import_may_use_only_the_notices_import_basis(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace('import_lawful_bases = ["legitimate_interest", "consent"]\n', ""), encoding="utf-8")
    assert parse_notice(path, {}).import_lawful_bases == ("legitimate_interest",)
    path.write_text(
        source.replace('import_lawful_bases = ["legitimate_interest", "consent"]\n', "").replace(
            'import_lawful_basis = "legitimate_interest"\n', ""
        ),
        encoding="utf-8",
    )
    assert parse_notice(path, {}).import_lawful_bases == ("consent",)  # the sign-up's basis
    path.write_text(source.replace('import_lawful_basis = "legitimate_interest"\n', ""), encoding="utf-8")
    assert parse_notice(path, {}).import_lawful_basis == "legitimate_interest"  # the first one listed


def test_the_bases_an_import_may_use_are_part_of_the_version(tmp_path):
    # They are a rule of where addresses come from, so the evidence of an import
    # (its notice version) says which bases were allowed when it ran.
    directory = copy_notices(tmp_path)
    before = load_notices(directory, {})["munkeby"].version
    path = directory / "munkeby.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace('= ["consent"]', '= ["consent", "legitimate_interest"]'),
        encoding="utf-8",
    )
    assert load_notices(directory, {})["munkeby"].version != before


# The versions of the shipped notices, as recorded with every consent given under them.
# Reading the same file must give the same version, whatever the code that reads it.
SHIPPED_VERSIONS = {
    "munkeby": "b66e621c1a36ff4f50b100b9d9e55c371108eefde9f2269561838a9245137a31",
    "mysoft": "104b724a7e1d345e41bf179dad9a763b25add164beef1be38edfafd05212982a",
}


def test_the_shipped_notices_keep_their_versions():
    notices = load_notices(NOTICES, {})
    assert {slug: notice.version for slug, notice in notices.items()} == SHIPPED_VERSIONS


@pytest.mark.parametrize(
    "old, new, messages",
    [
        ('kind = "apsis"', "kind = []", ["provider.kind must be one of"]),
        ('languages = ["sv", "en"]', "languages = 7", ["languages must be from"]),
        ('fields = ["email"]', "fields = true", ["collection.fields must include email"]),
        ('name = "Mysoft AB"\nemail = "info@mysoft.se"', 'name = ""', ["controller.name", "controller.email"]),
        ("evidence_days = 1095", "evidence_days = true", ["retention.evidence_days must be a positive whole number"]),
        ('title = "Mysoft AB newsletter"', 'title = "  "', ["text.en.title is required"]),
    ],
)
def test_every_problem_is_named_by_its_key_never_a_crash(tmp_path, old, new, messages):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    assert old in source
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace(old, new), encoding="utf-8")
    with pytest.raises(NoticeError) as refused:
        parse_notice(path, {})
    assert str(refused.value).startswith("mysoft.toml: ")
    assert all(message in str(refused.value) for message in messages)


def test_an_override_fills_an_empty_provider_id_and_an_empty_override_does_not_count(tmp_path):
    source = (NOTICES / "mysoft.toml").read_text(encoding="utf-8")
    path = tmp_path / "mysoft.toml"
    path.write_text(source.replace('topic = "mysoft-newsletter"', 'topic = ""'), encoding="utf-8")
    assert parse_notice(path, {"MYSOFT_TOPIC": "from-env"}).provider["topic"] == "from-env"
    with pytest.raises(NoticeError, match=r"provider\.topic must be a non-empty string"):
        parse_notice(path, {"MYSOFT_TOPIC": ""})
