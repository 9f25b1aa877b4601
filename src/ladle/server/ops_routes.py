"""Operations routes: /health, /metrics, /version, / and vLLM's /tokenize and /detokenize."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ladle.server import prompts
from ladle.server.errors import bad_request
from ladle.server.protocol_openai import DetokenizeRequest, TokenizeRequest
from ladle.server.state import server_state
from ladle.version import __version__

router = APIRouter(tags=["operations"])


@router.get("/", response_class=PlainTextResponse)
async def root() -> str:
    return "ladle is running"


@router.get("/health")
async def health(request: Request) -> Response:
    manager = server_state(request).manager
    if manager.any_dead:
        return JSONResponse(
            {"status": "error", "detail": "an engine stopped after an error"}, status_code=503
        )
    if manager.is_loading:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    model = await server_state(request).manager.get(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("prompt: give exactly one of prompt or messages", "prompt")
    if body.messages is not None:
        messages = [m.as_template_message(i) for i, m in enumerate(body.messages)]
        _, ids = await prompts.render_chat(model, messages, add_generation_prompt=body.add_generation_prompt)
    else:
        ids = await prompts.encode(model, body.prompt or "", add_special_tokens=body.add_special_tokens)
    result: dict[str, Any] = {"count": len(ids), "max_model_len": model.max_model_len, "tokens": ids}
    result["token_strs"] = model.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return result


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    model = await server_state(request).manager.get(body.model)
    prompts.check_token_ids(model, body.tokens, "tokens")
    if model.tokenizer is None:
        raise bad_request("tokens: this model has no tokenizer", "tokens")
    return {"prompt": model.tokenizer.decode(body.tokens)}
