"""The class catalog of Puppet modules (the autoload rule, warnings, every broken file reported) and of
a classes file."""

from __future__ import annotations

import pytest

from treeherd.core.puppet.manifests import ManifestError, autoload_name, classes_file, module_classes
from treeherd.model.puppet import PuppetParam

WEB = """
class profile::web (Integer $workers = 4) inherits profile {
  file { '/tmp/x': content => "${workers} ) {" }
}
"""


def test_autoload_rule() -> None:
    assert autoload_name("foo", "init.pp") == "foo"
    assert autoload_name("foo", "bar.pp") == "foo::bar"
    assert autoload_name("foo", "bar/baz.pp") == "foo::bar::baz"
    assert autoload_name("foo", "Bar.pp") is None
    assert autoload_name("foo", "notes.txt") is None


def test_module_classes_keep_what_the_autoloader_finds() -> None:
    files = [
        ("profile", "init.pp", "class profile { }"),
        ("profile", "web.pp", WEB),
        ("profile", "db/mysql.pp", "class profile::db::mysql($port = 3306) { class helper {} }"),
        ("profile", "misplaced.pp", "class profile::elsewhere { }"),
        ("Bad-Module", "init.pp", "class whatever { }"),
    ]
    classes, warnings = module_classes(files)
    assert [c.name for c in classes] == ["profile", "profile::db::mysql", "profile::web"]
    assert classes[1].params == [PuppetParam(name="port", default="3306")]
    assert classes[1].file == "profile/manifests/db/mysql.pp"
    assert any(
        "profile::db::mysql::helper" in w and "profile/manifests/db/mysql/helper.pp" in w for w in warnings
    )
    assert any("profile::elsewhere" in w for w in warnings)
    assert any("Bad-Module" in w for w in warnings)


def test_every_broken_file_is_reported_and_nothing_is_returned() -> None:
    files = [
        ("a", "init.pp", "class a {"),
        ("b", "init.pp", "class b { }"),
        ("c", "init.pp", "class c ($x $y) { }"),
    ]
    with pytest.raises(ManifestError) as caught:
        module_classes(files)
    assert "a/manifests/init.pp:1" in caught.value.detail
    assert "c/manifests/init.pp:1" in caught.value.detail
    assert "nothing was changed" in caught.value.detail


def test_a_class_defined_twice_is_an_error() -> None:
    files = [("a", "init.pp", "class a { }"), ("a", "init.pp", "class a { }")]
    with pytest.raises(ManifestError, match="defined twice"):
        module_classes(files)


def test_classes_file() -> None:
    found = classes_file("# the classes\nbase\n\nprofile::web  # the web tier\n::base\n")
    assert [(c.name, c.params_known) for c in found] == [("base", False), ("profile::web", False)]
    with pytest.raises(ManifestError, match=r"f:2: 'not a class' is not a Puppet class name"):
        classes_file("base\nnot a class\n", "f")
