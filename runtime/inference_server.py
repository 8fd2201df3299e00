"""A backend that infers on a Triton Inference Server: ``hrx upscale --backend triton --url URL --model-name N``.

The model's metadata (scale, tile, overlap, channels, ...) comes from the server, from the ``hrx_*``
``parameters`` of its config (``hrx triton-repo`` writes them; ``scripts/pytriton_serve.py`` publishes them),
so the client needs no model file. Tiling, blending and image I/O stay local (the same code as every other
backend); only the tiles travel, as FP32 binary tensors over HTTP (``http://host:port`` or ``host:port``) or
gRPC (``grpc://host:port``).

``infer_many`` keeps ``inflight`` requests outstanding, so Triton's dynamic batcher can merge the tiles of one
image (and of other clients) into one execution; results come back in order.

Errors that stop the run before it starts (server down, unknown model, timeout, no HRX metadata) are one
line with exit code 2 (:class:`TritonError`).

During the run, a request that fails with a connection error or a timeout is retried ``retries`` times with
exponential backoff (0.25 s, 0.5 s, 1 s, ...). ``breaker`` requests failing in a row for good (connection
errors after their retries) open a circuit breaker: every later request fails at once with
:class:`TritonDown` (a :class:`~hrx.errors.BackendDown`, exit code 2), so the images left fail together
instead of one timeout each. A run that stops (an error, Ctrl-C) cancels its requests still in flight.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Iterable, Iterator

import numpy as np

from hrx.errors import BackendDown, HRXError, MissingDependencyError
from hrx.interface import Backend
from hrx.interface import bounded_int
from hrx.interface import ModelInfo

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_INFLIGHT = 4
DEFAULT_RETRIES = 3
DEFAULT_BREAKER = 3  # requests failing in a row (after their retries) before the server counts as gone
BACKOFF_S = 0.25
# words of the connection-level failures that a retry may cure (the server restarting, a dropped socket,
# a timeout); anything else (a bad request, a model error) fails its image at once
_TRANSIENT = ("connect", "refused", "reset", "unavailable", "timed out", "timeout", "deadline", "broken pipe",
              "eof", "socket", "closed", "unreachable", "503", "429", "temporarily")


class TritonError(HRXError):
    """The server cannot be used: down, unknown model, timeout, a config without HRX metadata."""

    exit_code = 2


class TritonDown(BackendDown, TritonError):
    """The circuit breaker is open: the server stopped answering during the run."""


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` looks like a connection failure or a timeout (worth a retry), not a refused request."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    status = getattr(e, "status", None)
    text = f"{type(e).__name__} {status() if callable(status) else ''} {e}".lower()
    return any(word in text for word in _TRANSIENT)


def parse_url(url: str) -> tuple[str, str]:
    """``(protocol, host:port)`` from ``grpc://h:p``, ``http://h:p`` or ``h:p`` (HTTP)."""
    for scheme in ("grpc", "http"):
        if url.startswith(scheme + "://"):
            return scheme, url[len(scheme) + 3:].rstrip("/")
    if "://" in url:
        raise TritonError(f"--url {url}: use http://HOST:PORT or grpc://HOST:PORT (https is not supported here)")
    return "http", url.rstrip("/")


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


class TritonBackend(Backend):
    """Runs HRX tiles on a model served by Triton (see module doc)."""

    thread_safe = True

    def __init__(self, url: str, model_name: str, timeout: float = DEFAULT_TIMEOUT_S,
                 inflight: int = DEFAULT_INFLIGHT, retries: int | None = None, breaker: int | None = None,
                 backoff: float | None = None) -> None:
        self.url, self.model_name, self.timeout = url, model_name, float(timeout)
        self.retries = max(0, DEFAULT_RETRIES if retries is None else retries)
        self.breaker = max(1, DEFAULT_BREAKER if breaker is None else breaker)
        self.backoff = max(0.0, BACKOFF_S if backoff is None else backoff)
        self._failures = 0  # requests failed in a row for good (connection errors)
        self._down: TritonDown | None = None
        self.protocol, hostport = parse_url(url)
        self.inflight = max(1, inflight)
        self.name = f"triton-{self.protocol}"
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
            from tritonclient.utils import InferenceServerException  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError(f"the Triton client is not installed ({e}); pip install 'hrx[triton]'") from None
        self._module, self._hostport = client_module, hostport
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self.info, self._config = self._read_model()
        inputs, outputs = self._config.get("input"), self._config.get("output")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) for t in inputs + outputs):
            raise TritonError(f"{self._where}: the model config has no readable input / output list")
        if len(inputs) != 1 or len(outputs) != 1:
            raise TritonError(f"{self._where}: expected one input and one output, the config has "
                              f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0]["name"], outputs[0]["name"]
        try:
            self.max_batch_size = bounded_int(self._config.get("max_batch_size", 0), (0, 65536), self._where,
                                              "max_batch_size")
            raw_dims = inputs[0].get("dims", [])
            if not isinstance(raw_dims, list) or len(raw_dims) > 8:
                raise HRXError(f"{self._where}: config key 'dims' of input {self._input!r} is not a list of sizes")
            dims = [bounded_int(d, (-1, 1 << 20), self._where, "dims") for d in raw_dims]
        except HRXError as e:
            raise TritonError(str(e)) from e
        i = self.info
        self.input_shape = (i.batch, i.in_channels, i.tile, i.tile)
        expected = list(self.input_shape[1:]) if self.max_batch_size > 0 else list(self.input_shape)
        if dims != expected:
            raise TritonError(f"{self._where}: input dims {dims} do not match the HRX metadata {expected}")
        if self.max_batch_size and i.batch > self.max_batch_size:
            raise TritonError(f"{self._where}: HRX batch {i.batch} exceeds max_batch_size {self.max_batch_size}")

    @property
    def client(self):
        """The gRPC client is shared; the HTTP one (gevent) works only on the thread that made it, so each
        thread (the runtime's workers) gets its own."""
        client = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                if self.protocol == "grpc" and self._clients:
                    client = self._clients[0]
                else:
                    client = self._new_client()
                    self._clients.append(client)
            self._local.client = client
        return client

    def _new_client(self):
        try:
            if self.protocol == "grpc":
                return self._module.InferenceServerClient(self._hostport)
            return self._module.InferenceServerClient(self._hostport, concurrency=self.inflight,
                                                      connection_timeout=self.timeout, network_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - a malformed address
            raise TritonError(f"--url {self.url}: {_reason(e)}") from None

    @property
    def _where(self) -> str:
        return f"Triton model {self.model_name!r} at {self.url}"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - InferenceServerException, socket errors, gevent/grpc timeouts
            raise TritonError(f"{self._where}: {what} failed ({_reason(e)})") from None

    def _timeout_kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def _read_model(self) -> tuple[ModelInfo, dict]:
        from hrx.runtime.inference_server_repo import info_from_parameters

        try:
            live = self.client.is_server_live(**self._timeout_kw())
        except Exception as e:  # noqa: BLE001
            raise TritonError(f"cannot reach a Triton server at {self.url} ({_reason(e)})") from None
        if not live:
            raise TritonError(f"the Triton server at {self.url} is not live")
        ready = self._call("model readiness check", self.client.is_model_ready, self.model_name, **self._timeout_kw())
        if not ready:
            try:  # the listing is a courtesy: some servers (PyTriton) restrict the repository API
                index = self.client.get_model_repository_index(**self._index_kw())
                names = sorted({m["name"] if isinstance(m, dict) else m.name for m in _index_models(index)})
                listing = f" (models: {', '.join(names) or 'none'})"
            except Exception:  # noqa: BLE001
                listing = ""
            raise TritonError(f"{self._where}: no such model ready on the server{listing}")
        if self.protocol == "grpc":
            config = self._call("reading the model config", self.client.get_model_config, self.model_name,
                                as_json=True, **self._timeout_kw())["config"]
        else:
            config = self._call("reading the model config", self.client.get_model_config, self.model_name)
        if not isinstance(config, dict) or not isinstance(config.get("parameters", {}), dict):
            raise TritonError(f"{self._where}: the model config is not a JSON object with parameters")
        params = {str(k): (str(v.get("string_value", "")) if isinstance(v, dict) else str(v))
                  for k, v in config.get("parameters", {}).items()}
        try:
            info = info_from_parameters(params, self._where)
        except HRXError as e:
            raise TritonError(str(e)) from None
        return info, config

    def _index_kw(self) -> dict[str, Any]:
        return {"as_json": True, **self._timeout_kw()} if self.protocol == "grpc" else {}

    # -- inference ------------------------------------------------------------------------------------

    def _inputs(self, tiles: np.ndarray) -> tuple[list, list]:
        if tuple(tiles.shape) != self.input_shape:
            raise HRXError(f"{self._where}: expected tiles of shape {list(self.input_shape)}, got {list(tiles.shape)}")
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        m = self._module
        inp = m.InferInput(self._input, list(tiles.shape), "FP32")
        if self.protocol == "grpc":
            inp.set_data_from_numpy(tiles)
            return [inp], [m.InferRequestedOutput(self._output)]
        inp.set_data_from_numpy(tiles, binary_data=True)
        return [inp], [m.InferRequestedOutput(self._output, binary_data=True)]

    def _submit(self, tiles: np.ndarray):
        """Start one request; returns a handle for :meth:`_result`. Raises the client's own errors."""
        inputs, outputs = self._inputs(tiles)
        if self.protocol == "http":
            return self.client.async_infer(self.model_name, inputs, outputs=outputs)
        from concurrent.futures import Future

        future: Future = Future()

        def done(result, error) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        future.call = self.client.async_infer(self.model_name, inputs, done, outputs=outputs,  # type: ignore[attr-defined]
                                              client_timeout=self.timeout)
        return future

    def _result(self, handle) -> np.ndarray:
        if self.protocol == "http":
            result = handle.get_result(timeout=self.timeout)
        else:
            result = handle.result(timeout=self.timeout + 5)
        out = result.as_numpy(self._output)
        if out is None:
            raise TritonError(f"{self._where}: the response has no output {self._output!r}")
        return np.asarray(out, dtype=np.float32)

    def _cancel(self, handle) -> None:
        """Stop a request in flight (gRPC: cancel the call; HTTP: kill its greenlet)."""
        try:
            if self.protocol == "grpc":
                call = getattr(handle, "call", None)
                if call is not None:
                    call.cancel()
            else:
                greenlet = getattr(handle, "_greenlet", None)
                if greenlet is not None:
                    greenlet.kill(block=False)
        except Exception:  # noqa: BLE001 - a request that already ended, or a client already closed
            pass

    def _finish(self, tiles: np.ndarray, handle=None) -> np.ndarray:
        """The result of ``handle`` (or of a new request for ``tiles``), retrying connection failures and
        timeouts with backoff; counts failures for the circuit breaker."""
        for attempt in range(self.retries + 1):
            if self._down is not None:
                raise self._down
            try:
                if handle is None:
                    handle = self._submit(tiles)
                out = self._result(handle)
            except HRXError:
                raise
            except Exception as e:  # noqa: BLE001 - InferenceServerException, socket errors, gevent/grpc timeouts
                handle = None
                if not is_transient(e):
                    raise TritonError(f"{self._where}: inference failed ({_reason(e)})") from e
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                self._count_failure(e)
                raise TritonError(f"{self._where}: inference failed after {self.retries + 1} tries ({_reason(e)})") from e
            with self._lock:
                self._failures = 0
            return out
        raise AssertionError("unreachable")

    def _count_failure(self, e: BaseException) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.breaker and self._down is None:
                self._down = TritonDown(f"{self._where}: the server stopped answering ({self._failures} requests "
                                        f"in a row failed after {self.retries + 1} tries each; last: {_reason(e)})")
            down = self._down
        if down is not None:
            raise down from e

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Send one batch to the server and wait for its result."""
        return self._finish(tiles)

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, with up to ``inflight`` requests outstanding; stopping early
        (an error, the caller closing the generator) cancels the requests still in flight."""
        pending: deque = deque()

        def start(tiles: np.ndarray):
            if self._down is not None:
                raise self._down
            try:
                return self._submit(tiles)
            except HRXError:
                raise
            except Exception:  # noqa: BLE001 - retried (or reported) when its result is due
                return None

        try:
            for tiles in batches:
                pending.append((tiles, start(tiles)))
                if len(pending) >= self.inflight:
                    yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            for _, handle in pending:
                if handle is not None:
                    self._cancel(handle)

    def close(self) -> None:
        """Close every client connection; idempotent."""
        with self._lock:
            clients, self._clients = self._clients, []
        self._local = threading.local()
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a client of a dead server (or from another thread)
                pass


def _index_models(index) -> list:
    if isinstance(index, dict):
        return index.get("models", [])
    return list(index or [])
