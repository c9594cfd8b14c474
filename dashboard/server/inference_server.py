"""A small HTTP inference server: `python -m dashboard.server.inference_server [--host H] [--port N]`.

It serves POST /generate and POST /analyze-trajectories with the same bodies and answers as the dashboard's
/api/generate and /api/analyze-trajectories (it runs the dashboard's generation service in-process), plus
GET /health. The dashboard forwards to it when INFERENCE_URL is set, so models can live on another machine (a
GPU box) while the dashboard stays light. Checkpoint paths are confined to its own EXPERIMENTS_DIR.
It has no authentication: bind it to loopback or a private network (the default host is 127.0.0.1).
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from fastapi import Depends, FastAPI, Request

from .errors import install_error_handlers
from .models import AnalyzeRequest, AnalyzeResponse, GenerateRequest, GenerateResponse
from .services.generation import GenerationService
from .services.plugin_registry import PluginRegistry
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    # the inference server itself never forwards: it is where INFERENCE_URL points
    settings = (settings or Settings.from_env()).with_(inference_url=None)
    registry = PluginRegistry.load(settings.manifest_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.generation = GenerationService(settings, registry)
        try:
            yield
        finally:
            await app.state.generation.close()

    app = FastAPI(title="Tidal inference server", lifespan=lifespan)
    install_error_handlers(app)

    def service(request: Request) -> GenerationService:
        return request.app.state.generation

    @app.get("/health")
    async def health(svc: GenerationService = Depends(service)):
        return {"status": "ok", "cachedModels": len(svc.cache._items), "loads": svc.cache.loads}

    @app.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
    async def generate(body: GenerateRequest, svc: GenerationService = Depends(service)):
        return await svc.generate(body)

    @app.post("/analyze-trajectories", response_model=AnalyzeResponse, response_model_exclude_none=True)
    async def analyze(body: AnalyzeRequest, svc: GenerationService = Depends(service)):
        return await svc.analyze(body)

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboard.server.inference_server",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
