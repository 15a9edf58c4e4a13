"""Errors in OpenAI's JSON shape, so the official SDK raises the right class.

Status → SDK exception: 400 BadRequestError, 401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 413/other 4xx APIStatusError,
429 RateLimitError, 5xx InternalServerError.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def invalid_api_key(message: str = "Incorrect API key provided.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_not_allowed(model: str) -> GatewayError:
    return GatewayError(
        403,
        f"This API key is not allowed to use the model `{model}`.",
        type="permission_error",
        param="model",
        code="model_not_allowed",
    )


def client_disconnected() -> GatewayError:
    return GatewayError(499, "The client closed the connection.", code="client_disconnected")


def upstream_unavailable(message: str, *, status: int = 502, code: str = "upstream_unavailable") -> GatewayError:
    return GatewayError(status, message, type="api_error", code=code)


def request_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body exceeds the {limit} byte limit.", code="request_too_large")


def method_not_allowed(method: str, where: str) -> GatewayError:
    return GatewayError(405, f"Method {method} is not allowed {where}.", code="method_not_allowed")
