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
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Iterable, Iterator

import numpy as np

from hrx.errors import HRXError, MissingDependencyError
from hrx.runtime.backend import Backend
from hrx.runtime.model_info import ModelInfo

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_INFLIGHT = 4


class TritonError(HRXError):
    """The server cannot be used: down, unknown model, timeout, a config without HRX metadata."""

    exit_code = 2


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

    def __init__(self, url: str, model_name: str, timeout: float = DEFAULT_TIMEOUT_S,
                 inflight: int = DEFAULT_INFLIGHT) -> None:
        self.url, self.model_name, self.timeout = url, model_name, float(timeout)
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
        inputs, outputs = self._config["input"], self._config["output"]
        if len(inputs) != 1 or len(outputs) != 1:
            raise TritonError(f"{self._where}: expected one input and one output, the config has "
                              f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0]["name"], outputs[0]["name"]
        self.max_batch_size = int(self._config.get("max_batch_size", 0))
        i = self.info
        self.input_shape = (i.batch, i.in_channels, i.tile, i.tile)
        dims = [int(d) for d in inputs[0].get("dims", [])]
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
        from hrx.runtime.triton_repo import info_from_parameters

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
        params = {k: (v.get("string_value", "") if isinstance(v, dict) else str(v))
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
        """Start one request; returns a handle for :meth:`_result`."""
        inputs, outputs = self._inputs(tiles)
        if self.protocol == "http":
            return self._call("inference", self.client.async_infer, self.model_name, inputs, outputs=outputs)
        from concurrent.futures import Future

        future: Future = Future()

        def done(result, error) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._call("inference", self.client.async_infer, self.model_name, inputs, done, outputs=outputs,
                   client_timeout=self.timeout)
        return future

    def _result(self, handle) -> np.ndarray:
        if self.protocol == "http":
            result = self._call("inference", handle.get_result, timeout=self.timeout)
        else:
            result = self._call("inference", handle.result, timeout=self.timeout + 5)
        out = result.as_numpy(self._output)
        if out is None:
            raise TritonError(f"{self._where}: the response has no output {self._output!r}")
        return np.asarray(out, dtype=np.float32)

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return self._result(self._submit(tiles))

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, with up to ``inflight`` requests outstanding."""
        pending: deque = deque()
        for tiles in batches:
            pending.append(self._submit(tiles))
            if len(pending) >= self.inflight:
                yield self._result(pending.popleft())
        while pending:
            yield self._result(pending.popleft())

    def close(self) -> None:
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
