"""INT8 calibration with explicit Q/DQ (``hrx calibrate``), on ONNX Runtime's static quantizer.

Modules (each imported on use; nothing heavy at ``import hrx.calibration``)::

    data      tiles from a folder of images: calibration crops, held-back pairs for the gate
    graph     which nodes of an HRX export stay float, and why (router, scan, softmax, output convs, ...)
    quantize  ranges (ONNX Runtime's calibrators), the QDQ pass per --target, the fallback ladder
    quality   the gate: FP32 vs INT8 PSNR on held-back tiles
    cache     the ranges cache next to the output (re-quantizing needs no images)
    pipeline  calibrate(CalibrateOptions) -> CalibrationReport, what the CLI runs
    report    the CLI summary
"""
