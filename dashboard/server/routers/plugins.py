"""The plugin registry: manifests (as parsed at start-up) and the plugin's config files."""
from __future__ import annotations

import os

from fastapi import APIRouter, Depends

from ..deps import get_services
from ..errors import NotFound
from ..models import ConfigFileResponse, ConfigListResponse, ErrorResponse, PluginsResponse
from ..services.paths import CONFIG_FILE_RE, check_config_filename

router = APIRouter(prefix="/api/plugins", tags=["plugins"],
                   responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})


def _manifest(services, name: str):
    manifest = services.registry.get(name)
    if manifest is None:
        raise NotFound(f"plugin not found: {name[:100]}")
    return manifest


@router.get("", response_model=PluginsResponse)
async def list_plugins(services=Depends(get_services)):
    return {"plugins": [services.registry.get(n).summary() for n in services.registry.names()]}


@router.get("/{name}", summary="The full manifest of one plugin")
async def get_plugin(name: str, services=Depends(get_services)) -> dict:
    return _manifest(services, name).model_dump(mode="json")


@router.get("/{name}/configs", response_model=ConfigListResponse)
async def list_configs(name: str, services=Depends(get_services)):
    _manifest(services, name)
    configs = services.registry.plugin_dir(name) / "configs"
    try:
        files = sorted(e.name for e in os.scandir(configs) if e.is_file() and CONFIG_FILE_RE.match(e.name))
    except OSError:
        files = []
    return {"plugin": name, "files": files}


@router.get("/{name}/configs/{file}", response_model=ConfigFileResponse)
async def get_config(name: str, file: str, services=Depends(get_services)):
    _manifest(services, name)
    check_config_filename(file)
    configs = (services.registry.plugin_dir(name) / "configs").resolve()
    path = (configs / file).resolve()
    if path.parent != configs or not path.is_file():  # a symlink out of configs/ is "not found" too
        raise NotFound(f"config file not found: {file}")
    return {"plugin": name, "filename": file, "content": path.read_text(encoding="utf-8", errors="replace")}
