"""The class catalog of a set of Puppet modules, and of a classes file.

`module_classes` applies Puppet's autoload rule: module `foo`'s `manifests/init.pp` holds class `foo`,
`manifests/bar/baz.pp` holds `foo::bar::baz`. A class defined anywhere else cannot be found by Puppet
when only the ENC names it, so it is left out of the catalog with a warning. Every syntax problem is
reported with its file and line; a file with one is not read at all (nothing is half-parsed). Reading
the code itself is `core.puppet.manifest_lexer` (tokens) and `core.puppet.manifest_parser` (classes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from treeherd.core.puppet.manifest_lexer import ManifestError, tokenize
from treeherd.core.puppet.manifest_parser import NAME_SEGMENT, parse_manifest
from treeherd.model.puppet import PuppetClass

__all__ = ["ManifestError", "autoload_name", "classes_file", "module_classes", "parse_manifest", "tokenize"]

_MODULE = re.compile(r"^[a-z][a-z0-9_]*$")


def autoload_name(module: str, relative: str) -> str | None:
    """The class Puppet's autoloader looks for in `<module>/manifests/<relative>`, or None (not a .pp
    file, or a path Puppet cannot name)."""
    if not relative.endswith(".pp"):
        return None
    parts = relative[:-3].split("/")
    if parts == ["init"]:
        return module
    if not all(NAME_SEGMENT.fullmatch(part) for part in parts):
        return None
    return "::".join([module, *parts])


def _autoload_path(name: str) -> str:
    module, *rest = name.split("::")
    return f"{module}/manifests/{'/'.join(rest) or 'init'}.pp"


def module_classes(files: Iterable[tuple[str, str, str]]) -> tuple[list[PuppetClass], list[str]]:
    """The catalog of a set of modules from `(module, path under manifests/, text)` triples, and
    warnings about what was left out. Raises ManifestError listing every file that cannot be read."""
    classes: dict[str, PuppetClass] = {}
    warnings: list[str] = []
    errors: list[str] = []
    for module, relative, text in files:
        where = f"{module}/manifests/{relative}"
        if not _MODULE.fullmatch(module):
            warnings.append(f"{module}: not a valid Puppet module name, skipped")
            continue
        expected = autoload_name(module, relative)
        try:
            parsed = parse_manifest(text, where)
        except ManifestError as error:
            errors.append(error.detail)
            continue
        for found in parsed:
            if found.name != expected:
                warnings.append(
                    f"{where}:{found.line}: class {found.name} is not where Puppet's autoloader looks for it"
                    f" ({_autoload_path(found.name)}), left out"
                )
                continue
            if found.name in classes:
                errors.append(f"{where}:{found.line}: class {found.name} is defined twice")
                continue
            classes[found.name] = PuppetClass(
                name=found.name, parent=found.parent, params=found.params, file=where
            )
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ManifestError(f"the Puppet code has errors; nothing was changed:\n  {shown}", field="modules")
    return [classes[name] for name in sorted(classes)], warnings


def classes_file(text: str, where: str = "<classes file>") -> list[PuppetClass]:
    """A classes file: one class name a line; blank lines and `#` comments are ignored."""
    names: dict[str, None] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip().removeprefix("::")
        if not line:
            continue
        if not all(NAME_SEGMENT.fullmatch(segment) for segment in line.split("::")):
            raise ManifestError(
                f"{where}:{number}: {line!r} is not a Puppet class name (one name a line, e.g. profile::web)",
                field="classes_file",
            )
        names[line] = None
    return [PuppetClass(name=name, params_known=False) for name in sorted(names)]
