"""medshot.core.registry: one name -> builder mechanism whose plugin modules load only when used."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medshot.core.errors import MedshotError
from medshot.core.registry import Entry, Registry, resolve

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import sys

# Records every import of this module, so a test can tell whether the registry imported it.
IMPORTS = getattr(sys, "_medshot_registry_probe", [])
sys._medshot_registry_probe = IMPORTS
IMPORTS.append(__name__)


def build(flavour, size=1, colour="red"):
    return {"flavour": flavour, "size": size, "colour": colour}


def build_any(**options):
    return options


def ready(flavour):
    return flavour == "vanilla", f"{flavour} checked"


def broken(flavour):
    raise RuntimeError("no freezer")


class Maker:
    @staticmethod
    def make(size=2):
        return size
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fresh plugin module name on sys.path; returns (module name, list of its imports so far)."""
    name = f"registry_probe_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "_medshot_registry_probe", [], raising=False)
    yield name, sys._medshot_registry_probe
    sys.modules.pop(name, None)


def _registry(module: str, check_options: bool = True) -> Registry:
    return Registry("flavour", [
        Entry("vanilla", f"{module}:build", family="ice", description="plain", availability=f"{module}:ready",
              fixed={"flavour": "vanilla"}),
        Entry("mint", f"{module}:build", availability=f"{module}:broken", fixed={"flavour": "mint"}),
        Entry("free", f"{module}:build_any"),
        Entry("local", lambda size=3: size * 2),
    ], check_options=check_options)


def test_listing_imports_no_plugin_and_building_imports_it_once(plugin):
    module, imports = plugin
    registry = _registry(module)
    assert registry.names() == ["vanilla", "mint", "free", "local"]
    assert [e.family for e in registry.entries()] == ["ice", "", "", ""]
    assert "vanilla" in registry and len(registry) == 4
    assert registry.status("free") == (True, "weights-free")  # no check: nothing to import
    assert imports == [] and module not in sys.modules

    assert registry.build("vanilla", size=2, colour=None) == {"flavour": "vanilla", "size": 2, "colour": "red"}
    assert imports == [module]
    assert registry.build("mint") == {"flavour": "mint", "size": 1, "colour": "red"}
    assert imports == [module]  # imported once, then reused


def test_asking_availability_imports_the_plugin(plugin):
    module, imports = plugin
    registry = _registry(module)
    assert registry.status("vanilla") == (True, "vanilla checked")
    assert imports == [module]


def test_failing_availability_becomes_a_reason(plugin):
    module, _ = plugin
    registry = _registry(module)
    assert registry.status("mint") == (False, "RuntimeError: no freezer")
    missing = Registry("flavour", [Entry("ghost", "nowhere_at_all:build", availability="nowhere_at_all:ready")])
    ok, why = missing.status("ghost")
    assert not ok and why.startswith("ModuleNotFoundError") and "nowhere_at_all" in why
    assert missing.entries()[0].available() == (ok, why)
    assert Registry("flavour").status("nope") == (False, "unknown flavour 'nope'")


def test_unknown_name_lists_the_known_ones(plugin):
    module, imports = plugin
    with pytest.raises(MedshotError, match=r"unknown flavour 'rum'; known: vanilla, mint, free, local"):
        _registry(module).build("rum")
    assert imports == []


def test_options_are_checked_against_the_builder(plugin):
    module, _ = plugin
    registry = _registry(module)
    # `flavour` is fixed by the entry, so it is not an option users may set.
    message = r"flavour 'vanilla' does not take option\(s\) flavour, sugar \(it takes: size, colour\)"
    with pytest.raises(MedshotError, match=message):
        registry.build("vanilla", sugar=1, flavour="mint")
    assert registry.build("free", anything=1) == {"anything": 1}  # **options: not checked
    assert registry.build("local", size=5) == 10
    with pytest.raises(MedshotError, match=r"it takes: size\)"):
        registry.build("local", depth=1)
    with pytest.raises(TypeError):  # unchecked registries leave it to the builder
        _registry(module, check_options=False).build("vanilla", sugar=1)


def test_register_replaces_in_place(plugin):
    module, _ = plugin
    registry = _registry(module)
    registry.register(Entry("mint", lambda: "new mint"))
    registry.register(Entry("lemon", lambda: "lemon"))
    assert registry.names() == ["vanilla", "mint", "free", "local", "lemon"]
    assert registry.build("mint") == "new mint"


def test_resolve(plugin):
    module, _ = plugin
    assert resolve(len) is len
    assert resolve(f"{module}:Maker.make")() == 2
    with pytest.raises(ValueError, match="package.module:function"):
        resolve(f"{module}.build")
    with pytest.raises(AttributeError):
        resolve(f"{module}:nothing")


def test_catalogues_import_no_plugin_module():
    # A fresh interpreter: listing every backbone and segmenter loads no builder module and no torch.
    code = textwrap.dedent("""
        import sys
        import medshot
        from medshot.features import backbone_entries, backbone_names
        from medshot.segment import segmenter_names
        assert backbone_names()[0] == "classical" and segmenter_names()[:2] == ["classical", "randomwalker"]
        assert all(e.checkpoint for e in backbone_entries()[1:])
        plugins = ("medshot.features.foundation", "medshot.features.sam", "medshot.features.vit",
                   "medshot.features.diffusion", "medshot.segment.sam", "medshot.models.checkpoints", "torch")
        print(sorted(m for m in plugins if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
