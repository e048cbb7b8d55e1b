"""Settings: defaults < TOML file < VDI_* environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdi.settings import Settings, SettingsError, load_settings

ADMINS = "cn=admins,ou=groups,dc=district,dc=example"
HELPDESK = "cn=helpdesk,ou=groups,dc=district,dc=example"


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vdi.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    assert load_settings(environ={}) == Settings()


def test_toml_top_level_keys_and_tables(tmp_path: Path) -> None:
    path = toml(tmp_path, f"""
state_dir = "/srv/vdi"
listen_port = 8443
public_url = "https://vdi.district.example"

[ldap]
url = "ldaps://ldap.district.example"
timeout_s = 5

[role]
admin_groups = ["{ADMINS}"]
helpdesk_groups = ["{HELPDESK}", "{ADMINS}"]
""")
    s = load_settings(path, environ={})
    assert s.state_dir == Path("/srv/vdi")
    assert s.listen_port == 8443
    assert s.ldap_url == "ldaps://ldap.district.example"
    assert s.ldap_timeout_s == 5.0 and isinstance(s.ldap_timeout_s, float)
    assert s.role_admin_groups == (ADMINS,)
    assert s.role_map.helpdesk == (HELPDESK, ADMINS)
    assert s.secure_cookies
    assert s.effective_database_url == "sqlite:////srv/vdi/vdi.sqlite3"


def test_environment_beats_the_file_and_overrides_beat_both(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen_port = 8443\nldap_url = "ldap://from-file"\n'
                          'domain_type = "kvm"\n')
    env = {"VDI_LISTEN_PORT": "9000", "VDI_DOMAIN_TYPE": "qemu"}
    s = load_settings(path, environ=env)
    assert (s.listen_port, s.ldap_url, s.domain_type) == (9000, "ldap://from-file", "qemu")
    s = load_settings(path, environ=env, listen_port=9100)
    assert (s.listen_port, s.domain_type) == (9100, "qemu")


def test_the_file_can_come_from_vdi_config(tmp_path: Path) -> None:
    path = toml(tmp_path, 'storage_pool = "pool-from-file"\n')
    assert load_settings(environ={"VDI_CONFIG": str(path)}).storage_pool == "pool-from-file"
    other = tmp_path / "other.toml"
    other.write_text('storage_pool = "explicit"\n', encoding="utf-8")
    assert load_settings(other, environ={"VDI_CONFIG": str(path)}).storage_pool == "explicit"


def test_lists_in_the_environment_are_separated_by_semicolons() -> None:
    env = {"VDI_ROLE_ADMIN_GROUPS": f" {ADMINS} ;{HELPDESK};; ",
           "VDI_ALLOWED_ORIGINS": "https://a.example;https://b.example"}
    s = load_settings(environ=env)
    assert s.role_admin_groups == (ADMINS, HELPDESK)  # commas in DNs are kept
    assert s.origins == frozenset({"http://127.0.0.1:8000", "https://a.example",
                                   "https://b.example"})
    assert load_settings(environ={"VDI_ROLE_ADMIN_GROUPS": ""}).role_admin_groups == ()


def test_numbers_and_paths_from_the_environment() -> None:
    s = load_settings(environ={"VDI_SESSION_IDLE_S": "900", "VDI_LIBVIRT_TIMEOUT_S": "7.5",
                               "VDI_STORAGE_DIR": "/data/vdi"})
    assert (s.session_idle_s, s.libvirt_timeout_s, s.storage_dir) == (
        900, 7.5, Path("/data/vdi"))


@pytest.mark.parametrize(("env", "key"), [
    ({"VDI_LISTEN_PORT": "eighty"}, "listen_port"),
    ({"VDI_LISTEN_PORT": "80.5"}, "listen_port"),
    ({"VDI_LIBVIRT_TIMEOUT_S": "soon"}, "libvirt_timeout_s"),
    ({"VDI_SESSION_IDLE_S": ""}, "session_idle_s"),
])
def test_bad_values_in_the_environment_name_the_setting(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=repr(key)):
        load_settings(environ=env)


@pytest.mark.parametrize(("text", "key"), [
    ('listen_port = "eighty"', "listen_port"),
    ("listen_port = 80.9", "listen_port"),          # not silently truncated to 80
    ("listen_port = true", "listen_port"),          # not silently 1
    ('ldap_url = ["ldap://a", "ldap://b"]', "ldap_url"),
    ("allowed_origins = 5", "allowed_origins"),
    ("allowed_origins = [1, 2]", "allowed_origins"),
    ("[ldap]\ntimeout_s = [1]", "ldap_timeout_s"),
])
def test_bad_values_in_the_file_name_the_setting(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError, match=repr(key)):
        load_settings(toml(tmp_path, text + "\n"), environ={})


def test_a_bad_password_value_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="'ldap_bind_password'") as err:
        load_settings(toml(tmp_path, '[ldap]\nbind_password = ["hunter2"]\n'), environ={})
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(("text", "key"), [
    ('listen_prot = 8000', "listen_prot"),
    ('[ldap]\nurll = "ldap://x"', "ldap_urll"),
    ('[hypervisor]\nuri = "qemu:///system"', "hypervisor_uri"),
])
def test_unknown_keys_in_the_file_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError, match=f"unknown setting {key!r}"):
        load_settings(toml(tmp_path, text + "\n"), environ={})


def test_unknown_override_is_named() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'listen_prot'"):
        load_settings(environ={}, listen_prot=1)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(toml(tmp_path, "listen_port = \n"), environ={})


@pytest.mark.parametrize("value", ["auto", "kvm", "qemu"])
def test_domain_type_accepts_the_known_types(value: str) -> None:
    assert load_settings(environ={"VDI_DOMAIN_TYPE": value}).domain_type == value


@pytest.mark.parametrize("value", ["", "KVM", "xen", "tcg", "qemu "])
def test_domain_type_rejects_anything_else(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="'domain_type'"):
        load_settings(environ={"VDI_DOMAIN_TYPE": value})
    with pytest.raises(SettingsError, match="'domain_type'"):
        load_settings(toml(tmp_path, f"domain_type = {value!r}\n"), environ={})
