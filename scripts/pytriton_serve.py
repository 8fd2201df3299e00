"""Serve an HRX ONNX export on a real Triton Inference Server without NVIDIA's container: PyTriton's bundled
``tritonserver`` (Python backend) with ONNX Runtime inside the Python model, Triton's dynamic batcher in front.

Runs in its own environment (PyTriton pins NumPy < 2), made by ``scripts/setup.sh --test``::

    .venv-triton/bin/python scripts/pytriton_serve.py model.onnx --name hrx --http-port 8000 --grpc-port 8001

It imports nothing from hrx: the model's metadata comes from the ONNX file through ONNX Runtime and is
published under the model config's ``parameters`` as ``hrx_*`` (what ``hrx triton-repo`` writes), so
``hrx upscale --backend triton`` tiles with nothing but the server. A model exported with
``hrx export --batch dynamic`` gets ``max_batch_size`` = its ``max_batch`` and dynamic batching; a static one
is served at its batch. Prints ``READY <http port> <grpc port> <access token>`` once the model is loaded, and stops on
SIGTERM / SIGINT or when its standard input closes (so a test's server dies with the test).

The tritonserver binary's Python backend stub needs ``libpython`` of this interpreter: this script re-executes
itself once with ``LD_LIBRARY_PATH`` pointing at it.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
import threading

_SKIP = {"hrx_bisect_map"}


def _ensure_libpython() -> None:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX file from hrx export (--batch dynamic for request batching)")
    parser.add_argument("--name", default="hrx")
    parser.add_argument("--address", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--queue-delay-us", type=int, default=20000, help="dynamic batcher's wait to merge requests")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--workspace", default=None, help="PyTriton workspace folder (default: a temporary one); keep its path short, it holds "
                             "Unix sockets (108-byte limit)")
    args = parser.parse_args()
    _ensure_libpython()

    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.models import model as pytriton_model
    from pytriton.triton import Triton, TritonConfig

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    params = {f"hrx_{k}": v for k, v in meta.items() if k not in _SKIP and v}
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    dynamic = not isinstance(inp.shape[0], int)
    max_batch = int(meta.get("max_batch", "0")) if dynamic else 0
    dims_in, dims_out = tuple(inp.shape[1:]) if dynamic else tuple(inp.shape), \
        tuple(out.shape[1:]) if dynamic else tuple(out.shape)

    def infer(**inputs):
        x = inputs[inp.name]
        return {out.name: session.run([out.name], {inp.name: np.ascontiguousarray(x, np.float32)})[0]}

    if dynamic:
        infer = batch(infer)
        config = ModelConfig(batching=True, max_batch_size=max_batch,
                             batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us))
    else:
        config = ModelConfig(batching=False)

    original = pytriton_model.Model._get_triton_model_config

    def with_hrx_parameters(self):  # PyTriton has no public knob for config parameters: add HRX's metadata
        cfg = original(self)
        if self.model_name == args.name:
            cfg.backend_parameters.update(params)
        return cfg

    pytriton_model.Model._get_triton_model_config = with_hrx_parameters
    triton_config = TritonConfig(http_address=args.address, http_port=args.http_port, grpc_address=args.address,
                                 grpc_port=args.grpc_port, allow_metrics=False, exit_on_error=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Triton(config=triton_config, workspace=args.workspace) as triton:
        triton.bind(model_name=args.name, infer_func=infer,
                    inputs=[Tensor(name=inp.name, dtype=np.float32, shape=dims_in)],
                    outputs=[Tensor(name=out.name, dtype=np.float32, shape=dims_out)],
                    config=config, strict=True)
        triton.run()
        # PyTriton restricts some endpoints (statistics, ...) to clients sending this token as the header
        # triton-access-token; the inference and config endpoints HRX uses are open
        print(f"READY {args.http_port} {args.grpc_port} {triton.get_access_token()}", flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()


if __name__ == "__main__":
    main()
