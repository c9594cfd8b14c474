"""The installed plugins by name, each manifest parsed once (through `core.manifest`) when the server starts."""
from __future__ import annotations

from pathlib import Path

from core.manifest import DEFAULT_MANIFEST_PATH, PluginManifest, load_manifest


class PluginRegistry:
    """The installed plugins by name (one today: tidal), each parsed once."""

    def __init__(self, manifests: dict[str, tuple[PluginManifest, Path]]):
        self._plugins = manifests

    @classmethod
    def load(cls, manifest_path: str | Path = DEFAULT_MANIFEST_PATH) -> PluginRegistry:
        manifest_path = Path(manifest_path)
        manifest = load_manifest(manifest_path)
        return cls({manifest.name: (manifest, manifest_path.resolve().parent)})

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def get(self, name: str) -> PluginManifest | None:
        entry = self._plugins.get(name)
        return entry[0] if entry else None

    def plugin_dir(self, name: str) -> Path:
        return self._plugins[name][1]

    @property
    def default(self) -> PluginManifest:
        return self._plugins[self.names()[0]][0]

    @property
    def default_dir(self) -> Path:
        return self._plugins[self.names()[0]][1]
